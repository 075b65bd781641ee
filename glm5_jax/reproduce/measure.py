"""Measurements of a trained row: FLOPs of its compiled programs, losses on fixed batches,
routed experts per token, decode throughput.

FLOPs come from the compiled programs themselves (``plan/hlo_flops``: every dot, loop trip counts
applied): the train step of each attention stage the schedule runs (the step's forward,
backward, indexer distillation and optimizer), the prefill of a full-length prompt and one
decode step at full context. ``train/flops.py``'s formula (active matmul parameters,
attention and indexer terms) is reported beside them; where they differ, the compiled
program does extra or padded work (``hlo_flops`` says which).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from glm5_jax.config import ModelConfig
from glm5_jax.model import GLM5Model
from glm5_jax.model.param_count import count_parameters
from glm5_jax.plan.hlo_flops import MatmulFlops, matmul_flops
from glm5_jax.train.experiment import STAGES, stage_at

# Data seed of the fixed evaluation batches: not the training stream's order (the same corpus,
# so not a held-out split; every row of a table is scored on the same batches).
EVAL_DATA_SEED = 12345


def compiled_flops(function, *args) -> MatmulFlops:
    return matmul_flops(jax.jit(function).lower(*args).compile().as_text())


def stage_steps(config: ml_collections.ConfigDict) -> dict[str, int]:
    """Steps the schedule spends in each attention stage."""
    counts = dict.fromkeys(STAGES, 0)
    for step in range(1, config.total_steps + 1):
        counts[stage_at(config, step)] += 1
    return {stage: n for stage, n in counts.items() if n}


def train_flops_per_token(run) -> dict[str, float]:
    """Compiled train-step FLOPs per token, per stage and averaged over the schedule's steps
    (``run``: ``train.run_setup.build_run`` of the row's config)."""
    from glm5_jax.sharding import activate

    layout, config = run.layout, run.config
    tokens = config.batch_size * config.seq_len
    steps = stage_steps(config)
    per_stage = {}
    for stage in steps:
        # Lowered as training lowers it (inside the mesh, where the model's logical sharding
        # constraints apply): the same program, so the persistent cache already holds it.
        with activate(layout.mesh):
            compiled = layout.jit_step(stage).lower(layout.abstract_state, layout.abstract_batch()).compile()
        per_stage[stage] = matmul_flops(compiled.as_text()).flops * layout.mesh.size / tokens
    average = sum(per_stage[s] * n for s, n in steps.items()) / sum(steps.values())
    return {"average": average, **{f"stage_{s}": v for s, v in per_stage.items()}}


def inference_costs(config: ModelConfig, variables: dict, context: int, batch: int) -> dict[str, float]:
    """Compiled FLOPs per token of prefilling ``batch`` prompts of ``context`` tokens and of one
    decode step with ``context`` cached positions, and the decode step's tokens/s with the
    row's weights (best of a few timed steps on a full cache; the same compiled program)."""
    from glm5_jax.sample import CachedGLM5, init_cache

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
    cache = init_cache(config, batch, context)
    ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    prefill_model, decode_model = CachedGLM5(config, fresh=True), CachedGLM5(config)
    prefill = compiled_flops(lambda v, t, p, c, last: prefill_model.apply(v, t, p, c, last),
                             abstract, ints(batch, context), ints(batch, context), cache, ints(batch))
    decode = jax.jit(lambda v, t, p, c: decode_model.apply(v, t, p, c)).lower(
        abstract, ints(batch, 1), ints(batch, 1), cache).compile()
    tokens = jnp.zeros((batch, 1), jnp.int32)
    positions = jnp.full((batch, 1), context - 1, jnp.int32)
    step_s = timed(lambda: decode(variables, tokens, positions, cache))
    return {"prefill": prefill.flops / (batch * context),
            "decode": matmul_flops(decode.as_text()).flops / batch,
            "decode_tokens_per_s": batch / step_s}


def eval_batches(run, count: int) -> list[dict]:
    """``count`` batches of the row's corpus in a fixed order (EVAL_DATA_SEED), the same for
    every row trained on that corpus."""
    from glm5_jax.data.streams import stream_rows_iterator

    data_config = dataclasses.replace(run.data_config, seed=EVAL_DATA_SEED)
    iterator = stream_rows_iterator(data_config, run.prepared, run.region.rows)
    return [next(iterator) for _ in range(count)]


@functools.lru_cache(maxsize=8)
def _forward(config: ModelConfig):
    model = GLM5Model(config)

    def forward(variables, batch):
        logits, collections = model.apply(variables, batch["inputs"], batch["positions"],
                                          batch["segment_ids"], mutable=["intermediates"])
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        picked = jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
        mask = batch["loss_mask"]
        ce = -jnp.sum(picked * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        active = [v for path, v in jax.tree_util.tree_flatten_with_path(collections)[0]
                  if "active_experts_per_token" in jax.tree_util.keystr(path)]
        mean_active = jnp.mean(jnp.stack([jnp.mean(a) for a in active])) if active else jnp.float32(jnp.nan)
        return ce, mean_active, jnp.sum(mask)

    return jax.jit(forward)


def eval_loss_and_active_experts(config: ModelConfig, variables: dict, batches: Sequence[dict]
                                 ) -> tuple[float, float | None]:
    """Token-weighted cross entropy over ``batches`` and routed experts per token (None
    without MoE layers), with ``config``'s attention (dense when index_topk >= seq_len)."""
    forward = _forward(config)
    total = weight = 0.0
    active = []
    for batch in batches:
        ce, mean_active, tokens = jax.device_get(forward(variables, {k: jnp.asarray(v) for k, v in batch.items()}))
        total, weight = total + float(ce) * float(tokens), weight + float(tokens)
        active.append(float(mean_active))
    mean_active = float(np.mean(active)) if active and not math.isnan(active[0]) else None
    return total / max(weight, 1.0), mean_active


def active_parameters(config: ModelConfig, routed_per_token: float | None = None) -> float:
    """Parameters a token touches (embeddings and head included, MTP excluded); with dynamic
    routing, ``routed_per_token`` (the measured mean) replaces the static k."""
    counts = count_parameters(config)
    if not config.num_moe_layers or config.moe_as_dense or routed_per_token is None:
        return float(counts["active_per_token"])
    per_expert = counts["routed_experts"] / config.n_routed_experts
    return float(counts["total_without_mtp"] - counts["routed_experts"] + per_expert * routed_per_token)


def decode_tokens_per_second(config: ModelConfig, variables: dict, prompts: Sequence[Sequence[int]],
                             new_tokens: int, speculative_steps: int = 0, temperature: float = 0.0,
                             repeats: int = 2, seed: int = 0) -> tuple[float, float]:
    """(generated tokens per second, mean accepted length) of decoding ``prompts`` (greedy at
    temperature 0), best of ``repeats`` timed calls after one untimed call that compiles. EOS
    is ignored, so every row generates ``new_tokens``."""
    from glm5_jax.sample import run_batch

    def call():
        return run_batch(config, variables, prompts, new_tokens, temperature=temperature, seed=seed,
                         eos_token_id=None, speculative_steps=speculative_steps)

    result = call()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - start)
    generated = sum(len(g.token_ids) for g in result.generations)
    return generated / best, result.mean_accepted_length


def timed(function, repeats: int = 3) -> float:
    """Best wall time of ``function()`` (blocking on its result) over ``repeats`` calls, after
    one untimed call."""
    jax.block_until_ready(function())
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function())
        best = min(best, time.perf_counter() - start)
    return best
