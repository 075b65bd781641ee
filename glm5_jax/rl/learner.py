"""The learner: a sharded train state and one jitted, ahead-of-time compiled policy update.

The state is laid out by the mesh's logical rules (``glm5_jax.sharding``): parameters shard
as the model declares, optimizer moments follow their parameters, the batch shards over the
data axes. One update per batch, so the *proximal* policy of the decoupled objective is the
learner's current weights and its log-probs are this forward pass under stop-gradient.

Frozen during RL (``config.frozen_params``, matched against parameter paths): the DSA
lightning indexer, which the GLM-5 paper found makes RL unstable when trained, and the MTP
modules, which no RL loss reaches (weight decay alone would erode them). The indexer's top-k
is ``jax.lax.top_k``, deterministic (ties go to the lower position), so the sparse pattern a
token saw in the rollout is the one the learner recomputes from the same weights.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from glm5_jax.config import ModelConfig
from glm5_jax.model import GLM5Model, logical_partition_specs
from glm5_jax.rl.batching import BATCH_KEYS
from glm5_jax.rl.objectives import policy_objective, reference_kl
from glm5_jax.sharding import activate, batch_sharding, logical_shardings, make_mesh


@struct.dataclass
class LearnerState:
    step: jax.Array
    params: Any
    opt_state: Any
    routing: Any
    reference_params: Any  # the warm-start weights, for the optional KL; {} when unused


def _path_string(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def trainable_labels(params: Any, frozen_patterns: tuple[str, ...]) -> Any:
    """"frozen" for parameters whose path contains any pattern, else "trainable"."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if any(p in _path_string(path) for p in frozen_patterns)
        else "trainable", params)


def make_rl_optimizer(config: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
    """AdamW on trainable parameters (no decay on vectors: norms), zero updates on frozen ones."""
    decay_mask = jax.tree.map(lambda p: p.ndim >= 2, params)
    adamw = optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adamw(config.learning_rate, b1=config.adam_b1, b2=config.adam_b2,
                    eps=config.adam_eps, weight_decay=config.weight_decay, mask=decay_mask))
    labels = trainable_labels(params, tuple(config.frozen_params))
    return optax.multi_transform({"trainable": adamw, "frozen": optax.set_to_zero()}, labels)


def token_logprobs(model: GLM5Model, params, routing, input_ids, targets, temperature: float):
    """log pi(target | prefix) per position and the full log-softmax (for the entropy)."""
    logits = model.apply({"params": params, "routing": routing}, input_ids)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0], log_probs


def rl_train_step(state: LearnerState, batch: dict[str, jax.Array], *, model: GLM5Model,
                  optimizer: optax.GradientTransformation, config: ml_collections.ConfigDict):
    mask = batch["loss_mask"]
    tokens = jnp.maximum(jnp.sum(mask), 1.0)

    def loss_fn(params):
        logprobs, log_probs = token_logprobs(model, params, state.routing, batch["input_ids"],
                                             batch["targets"], config.temperature)
        out = policy_objective(
            config.objective, logprobs, batch["rollout_logprobs"], batch["advantages"], mask,
            eps_low=config.is_eps_low, eps_high=config.is_eps_high,
            proximal_logprobs=jax.lax.stop_gradient(logprobs), clip_eps=config.clip_eps,
            behaviour_weight_cap=config.behaviour_weight_cap,
            truncation_cap=config.truncation_cap)
        loss = out.loss
        metrics = {"objective": out.loss, "is_kept_fraction": out.kept_fraction,
                   "mean_is_ratio": out.mean_ratio}
        if config.kl_coef > 0:
            reference, _ = token_logprobs(model, state.reference_params, state.routing,
                                          batch["input_ids"], batch["targets"], config.temperature)
            kl = reference_kl(logprobs, reference, mask)
            loss = loss + config.kl_coef * kl
            metrics["kl_to_reference"] = kl
        entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
        metrics["entropy"] = jnp.sum(jax.lax.stop_gradient(entropy) * mask) / tokens
        metrics["rollout_logprob_gap"] = jnp.sum(
            jnp.abs(jax.lax.stop_gradient(logprobs) - batch["rollout_logprobs"]) * mask) / tokens
        return loss, metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


class Learner:
    """Owns the state and the compiled step; the loop feeds it numpy batches."""

    def __init__(self, config: ml_collections.ConfigDict, model_config: ModelConfig,
                 variables: dict[str, Any]) -> None:
        self.config = config
        self.model = GLM5Model(model_config)
        self.mesh = make_mesh(config.mesh)
        self.optimizer = make_rl_optimizer(config, variables["params"])
        with activate(self.mesh):
            shardings = logical_shardings(self.mesh, logical_partition_specs(self.model))
            params = jax.device_put(variables["params"], shardings["params"])
            # A model without MoE layers has no routing biases.
            routing = jax.device_put(variables.get("routing", {}), shardings.get("routing", {}))
            opt_state = jax.jit(self.optimizer.init)(params)
            reference = jax.tree.map(jnp.copy, params) if config.kl_coef > 0 else {}
            self.state = LearnerState(jnp.zeros((), jnp.int32), params, opt_state, routing, reference)
        self.state_shardings = jax.tree.map(lambda x: x.sharding, self.state)
        self.batch_shardings = {k: batch_sharding(self.mesh) for k in BATCH_KEYS}
        rows = config.groups_per_batch * config.group_size
        specs = {k: jax.ShapeDtypeStruct((rows, config.seq_len),
                                         jnp.int32 if k in ("input_ids", "targets") else jnp.float32)
                 for k in BATCH_KEYS}
        step = jax.jit(
            lambda state, batch: rl_train_step(state, batch, model=self.model,
                                               optimizer=self.optimizer, config=config),
            in_shardings=(self.state_shardings, self.batch_shardings),
            out_shardings=(self.state_shardings, None), donate_argnums=(0,))
        start = time.perf_counter()
        with activate(self.mesh):
            self._step = step.lower(self.state, specs).compile()
        self.compile_seconds = time.perf_counter() - start
        self._reset_opt = jax.jit(self.optimizer.init, out_shardings=self.state_shardings.opt_state)

    @property
    def step(self) -> int:
        return int(self.state.step)

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.state.params, "routing": self.state.routing}

    def train(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        with activate(self.mesh):
            placed = {k: jax.device_put(batch[k], self.batch_shardings[k]) for k in BATCH_KEYS}
            self.state, metrics = self._step(self.state, placed)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}

    def reset_optimizer(self) -> None:
        """The paper resets the optimizer state after each weight push."""
        with activate(self.mesh):
            self.state = self.state.replace(opt_state=self._reset_opt(self.state.params))
