"""Supervised warm start: a short imitation of reference solutions before RL.

Why: a randomly initialised policy almost never writes a passing program, so every group has
zero reward variance and GRPO has nothing to learn from. A few steps of next-token training on
(prompt, reference) pairs give the tiny policy a small, non-zero pass rate; RL takes it from
there. It is deliberately short: the point of the experiment is what RL adds.

The result is cached in a file keyed by the config (both modes of a comparison start from the
same weights and pay for it once).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import serialization

from glm5_jax.model import GLM5Model, init_variables
from glm5_jax.rl.tasks import CodeTask


def supervised_batch(tasks: list[CodeTask], indices: np.ndarray, tokenizer, seq_len: int,
                     prompt_of) -> dict[str, np.ndarray]:
    """Rows BOS + prompt + reference + EOS; only the reference and EOS are scored."""
    rows = len(indices)
    input_ids = np.full((rows, seq_len), tokenizer.pad_id, np.int32)
    targets = np.full((rows, seq_len), tokenizer.pad_id, np.int32)
    mask = np.zeros((rows, seq_len), np.float32)
    for row, index in enumerate(indices):
        task = tasks[index]
        prompt = [tokenizer.bos_id] + tokenizer.encode(prompt_of(task))
        answer = tokenizer.encode(task.reference) + [tokenizer.eos_id]
        tokens = np.asarray(prompt + answer)[:seq_len + 1]
        length = len(tokens) - 1
        input_ids[row, :length] = tokens[:-1]
        targets[row, :length] = tokens[1:]
        mask[row, len(prompt) - 1:length] = 1.0
    return {"input_ids": input_ids, "targets": targets, "loss_mask": mask}


def _cache_key(config: ml_collections.ConfigDict, model_config, prompts: list[str],
               start_from: str = "") -> str:
    """Everything the warm start depends on: its settings, the model, the seed, the exact
    (prompt, reference) pairs it imitates, and the weights it starts from when loaded."""
    fields = {"warm": config.warm_start.to_dict(), "model": model_config.to_dict(),
              "seed": config.seed, "data": prompts}
    if start_from:  # absent for fresh inits, so their existing cache entries stay valid
        fields["start_from"] = start_from
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def initial_variables(config: ml_collections.ConfigDict, model_config) -> dict[str, Any]:
    """The policy before the warm start: ``config.init_from``'s weights, or a fresh init."""
    if config.get("init_from"):
        from glm5_jax.sample.checkpoint import is_train_workdir, load_for_generation

        path = config.init_from
        _, variables = load_for_generation(path, model_config if is_train_workdir(path) else None)
        return {"params": variables["params"], "routing": variables.get("routing", {})}
    return init_variables(GLM5Model(model_config), jax.random.PRNGKey(config.seed))


def fingerprint(variables: dict[str, Any]) -> str:
    """A digest of every array (names, shapes, bytes): the identity of initial weights."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def warm_start_variables(config: ml_collections.ConfigDict, model_config, tasks: list[CodeTask],
                         tokenizer, prompt_of, log=print) -> tuple[dict[str, Any], dict[str, float]]:
    """(variables, info): initialised from ``config.seed`` and trained ``warm_start.steps`` steps."""
    cache_dir = config.warm_start.get("cache_dir") or ""
    model = GLM5Model(model_config)
    variables = initial_variables(config, model_config)
    start_from = fingerprint(variables) if config.get("init_from") else ""
    key = _cache_key(config, model_config, [prompt_of(t) + t.reference for t in tasks], start_from)
    cache = Path(cache_dir) / f"warm_start_{key}.msgpack" if cache_dir else None
    if cache is not None and cache.exists():
        restored = serialization.from_bytes(variables, cache.read_bytes())
        return restored, {"warm_start/cached": 1.0}
    start = time.perf_counter()
    steps = config.warm_start.steps
    optimizer = optax.adamw(config.warm_start.learning_rate, weight_decay=0.0)
    params, routing = variables["params"], variables["routing"]
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            logits = model.apply({"params": p, "routing": routing}, batch["input_ids"])
            per_token = optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), batch["targets"])
            return jnp.sum(per_token * batch["loss_mask"]) / jnp.maximum(batch["loss_mask"].sum(), 1)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(config.seed)
    loss = float("nan")
    for i in range(steps):
        indices = rng.integers(0, len(tasks), config.warm_start.batch_size)
        batch = supervised_batch(tasks, indices, tokenizer, config.warm_start.seq_len, prompt_of)
        params, opt_state, loss = step(params, opt_state, batch)
        if i % 20 == 0 or i == steps - 1:
            log(f"warm start step {i}: loss {float(loss):.3f}")
    variables = {"params": params, "routing": routing}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_suffix(".tmp")
        temporary.write_bytes(serialization.to_bytes(jax.device_get(variables)))
        temporary.replace(cache)
    return variables, {"warm_start/seconds": time.perf_counter() - start,
                       "warm_start/final_loss": float(loss), "warm_start/cached": 0.0}
