"""The learner: a sharded train state and one jitted, ahead-of-time compiled step per batch.

The state is laid out by the mesh's logical rules (``glm5_jax.sharding``): parameters shard
as the model declares, optimizer moments follow their parameters, the batch shards over the
data axes.

One step consumes one batch in ``minibatches * ppo_epochs`` optimizer updates (config fields;
both default to 1). With more than one, the batch's log-probs under the weights the learner
held when it arrived are computed once, before the first update, and are the *proximal*
policy of AReaL's decoupled objective for every update of the batch: its clipped ratio
pi_theta / pi_prox is 1 on the first update and moves away from 1 as the updates move the
weights. With a single update the proximal policy *is* the current one, so its log-probs are
that update's own forward pass under stop-gradient; the decoupled objective is refused there
(its clip could never act). Minibatch k holds rows k, k + minibatches, ...: each device keeps
its own rows of the data-sharded batch.

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
from glm5_jax.distributed import barrier
from glm5_jax.rl.batching import BATCH_KEYS, INTEGER_KEYS
from glm5_jax.rl.objectives import policy_objective, reference_kl
from glm5_jax.rl.optimizer import make_rl_optimizer, reset_moments
from glm5_jax.sharding import activate, batch_sharding, logical_shardings, make_mesh
from glm5_jax.train.losses import masked_mean


@struct.dataclass
class LearnerState:
    step: jax.Array  # batches trained on (the optimizer's own count is its updates)
    params: Any
    opt_state: Any
    routing: Any
    reference_params: Any  # the warm-start weights, for the optional KL; {} when unused


def updates_per_batch(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(minibatches, ppo_epochs) of the config, checked against the batch and the objective."""
    minibatches, epochs = config.get("minibatches", 1), config.get("ppo_epochs", 1)
    rows = config.groups_per_batch * config.group_size
    divisors = [d for d in range(1, rows + 1) if rows % d == 0]
    if minibatches not in divisors:
        raise ValueError(f"minibatches={minibatches} must divide the batch's rows (groups_per_batch"
                         f" * group_size = {rows}); allowed: {divisors}")
    if epochs < 1:
        raise ValueError(f"ppo_epochs={epochs} must be >= 1")
    if config.objective == "decoupled" and minibatches * epochs == 1:
        raise ValueError(
            "objective='decoupled' needs more than one update per batch (minibatches * ppo_epochs"
            " > 1): with one update the proximal policy is the current one and the clipped ratio "
            f"is always 1. Set minibatches to one of {divisors[1:]} or ppo_epochs >= 2")
    return minibatches, epochs


def token_logprobs(model: GLM5Model, params, routing, input_ids, targets, temperature: float):
    """log pi(target | prefix) per position and the full log-softmax (for the entropy)."""
    logits = model.apply({"params": params, "routing": routing}, input_ids)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0], log_probs


def batch_diagnostics(logprobs: jax.Array, log_probs: jax.Array, batch: dict[str, jax.Array],
                      held_version: jax.Array) -> dict[str, jax.Array]:
    """What the weights the learner held when the batch arrived say about it.

    ``logprob_mismatch``: mean |log pi_learner - log pi_rollout| over the action tokens that the
    held version itself sampled (``token_versions == held_version``): the same weights on the
    same tokens, so anything but float noise is a difference between the sampler's and the
    learner's computation. NaN when no such token is in the batch (``logprob_mismatch_tokens``
    is then 0).
    """
    mask = batch["loss_mask"]
    logprobs = jax.lax.stop_gradient(logprobs)
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
    gap = jnp.abs(logprobs - batch["rollout_logprobs"])
    held = mask * (batch["token_versions"] == held_version)
    return {"entropy": masked_mean(jax.lax.stop_gradient(entropy), mask),
            "rollout_logprob_gap": masked_mean(gap, mask),
            "logprob_mismatch": jnp.sum(gap * held) / jnp.sum(held),
            "logprob_mismatch_tokens": jnp.sum(held)}


def policy_update(state: LearnerState, batch: dict[str, jax.Array],
                  proximal_logprobs: jax.Array | None, *, model: GLM5Model,
                  optimizer: optax.GradientTransformation, config: ml_collections.ConfigDict):
    """One optimizer update on ``batch`` (a whole batch or one minibatch).

    ``proximal_logprobs`` None: this is the batch's only update, so the proximal policy is the
    current one (its log-probs: this forward pass under stop-gradient).
    Returns (state, this update's metrics, (log-probs, log-softmax) before the update).
    """
    mask = batch["loss_mask"]

    def loss_fn(params):
        logprobs, log_probs = token_logprobs(model, params, state.routing, batch["input_ids"],
                                             batch["targets"], config.temperature)
        proximal = (jax.lax.stop_gradient(logprobs) if proximal_logprobs is None
                    else proximal_logprobs)
        out = policy_objective(
            config.objective, logprobs, batch["rollout_logprobs"], batch["advantages"], mask,
            eps_low=config.is_eps_low, eps_high=config.is_eps_high, proximal_logprobs=proximal,
            clip_eps=config.clip_eps, behaviour_weight_cap=config.behaviour_weight_cap,
            truncation_cap=config.truncation_cap)
        loss = out.loss
        metrics = {"objective": out.loss, "is_kept_fraction": out.kept_fraction,
                   "mean_is_ratio": out.mean_ratio,
                   # mean |log pi_theta - log pi_prox|: 0 on a batch's first update, > 0 after.
                   "proximal_drift": masked_mean(
                       jnp.abs(jax.lax.stop_gradient(logprobs) - proximal), mask)}
        if config.kl_coef > 0:
            reference, _ = token_logprobs(model, state.reference_params, state.routing,
                                          batch["input_ids"], batch["targets"], config.temperature)
            kl = reference_kl(logprobs, reference, mask)
            loss = loss + config.kl_coef * kl
            metrics["kl_to_reference"] = kl
        return loss, (metrics, logprobs, log_probs)

    (loss, (metrics, logprobs, log_probs)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
    return state.replace(params=params, opt_state=opt_state), metrics, (logprobs, log_probs)


def minibatch_rows(x: jax.Array, minibatches: int) -> jax.Array:
    """[rows, ...] -> [minibatches, rows / minibatches, ...]; minibatch k = rows k::minibatches."""
    return x.reshape(x.shape[0] // minibatches, minibatches, *x.shape[1:]).swapaxes(0, 1)


def rl_train_step(state: LearnerState, batch: dict[str, jax.Array], held_version: jax.Array, *,
                  model: GLM5Model, optimizer: optax.GradientTransformation,
                  config: ml_collections.ConfigDict):
    """Train on one batch. ``held_version``: the published policy version whose weights the
    learner holds (-1: none, they are newer than the last push).

    Returns (state, metrics): the batch's diagnostics as scalars, each update's metrics as
    [updates] arrays in update order (epoch-major).
    """
    minibatches, epochs = updates_per_batch(config)
    step = dict(model=model, optimizer=optimizer, config=config)
    if minibatches * epochs == 1:
        state, metrics, (logprobs, log_probs) = policy_update(state, batch, None, **step)
        diagnostics = batch_diagnostics(logprobs, log_probs, batch, held_version)
        per_update = {name: value[None] for name, value in metrics.items()}
    else:
        logprobs, log_probs = token_logprobs(model, state.params, state.routing,
                                             batch["input_ids"], batch["targets"], config.temperature)
        # Reduced here, so the [rows, seq, vocab] log-softmax need not live through the updates.
        diagnostics = batch_diagnostics(logprobs, log_probs, batch, held_version)
        stacked = {k: minibatch_rows(v, minibatches) for k, v in batch.items()}
        stacked["proximal_logprobs"] = minibatch_rows(jax.lax.stop_gradient(logprobs), minibatches)

        def one_update(state, minibatch):
            arrays = {k: v for k, v in minibatch.items() if k != "proximal_logprobs"}
            state, metrics, _ = policy_update(state, arrays, minibatch["proximal_logprobs"], **step)
            return state, metrics

        def one_epoch(state, _):
            return jax.lax.scan(one_update, state, stacked)

        state, per_update = jax.lax.scan(one_epoch, state, None, length=epochs)
        per_update = {name: value.reshape(-1) for name, value in per_update.items()}
    return state.replace(step=state.step + 1), {**diagnostics, **per_update}


class Learner:
    """Owns the state and the compiled step; the loop feeds it numpy batches."""

    def __init__(self, config: ml_collections.ConfigDict, model_config: ModelConfig,
                 variables: dict[str, Any], mesh: jax.sharding.Mesh | None = None) -> None:
        updates_per_batch(config)  # refuse a bad schedule before compiling anything
        self.config = config
        self.model = GLM5Model(model_config)
        # ``mesh``: the loop's, over the devices config.placement gives the learner.
        self.mesh = make_mesh(config.mesh) if mesh is None else mesh
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
                                         jnp.int32 if k in INTEGER_KEYS else jnp.float32)
                 for k in BATCH_KEYS}
        step = jax.jit(
            lambda state, batch, held_version: rl_train_step(
                state, batch, held_version, model=self.model, optimizer=self.optimizer,
                config=config),
            in_shardings=(self.state_shardings, self.batch_shardings, None),
            out_shardings=(self.state_shardings, None), donate_argnums=(0,))
        start = time.perf_counter()
        with activate(self.mesh):
            self._step = step.lower(self.state, specs, jax.ShapeDtypeStruct((), jnp.int32)).compile()
        self.compile_seconds = time.perf_counter() - start
        barrier("glm5-rl-learner-step-compiled")  # no step's collectives while a peer compiles
        self._reset_moments = jax.jit(
            lambda params, opt_state: reset_moments(self.optimizer, opt_state, params),
            out_shardings=self.state_shardings.opt_state, donate_argnums=(1,))

    @property
    def step(self) -> int:
        return int(self.state.step)

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.state.params, "routing": self.state.routing}

    def held_policy_version(self) -> int:
        """The published version these weights are, or -1 if they are newer than the last push.

        The loop publishes the weights after every ``sync_every``-th step as the next version
        (version 0: the weights before step 1), so after ``step`` steps the learner holds
        version step / sync_every exactly when sync_every divides step.
        """
        every = self.config.sync_every
        return self.step // every if self.step % every == 0 else -1

    def train(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One step; metrics as floats, each update's averaged over the batch's updates.
        ``logprob_mismatch`` is absent when no token of the batch came from the held version."""
        held_version = np.int32(self.held_policy_version())
        with activate(self.mesh):
            placed = {k: jax.device_put(batch[k], self.batch_shardings[k]) for k in BATCH_KEYS}
            self.state, metrics = self._step(self.state, placed, held_version)
        out = {k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()}
        if out["logprob_mismatch_tokens"] == 0:
            del out["logprob_mismatch"]
        return out

    def reset_optimizer(self) -> None:
        """The paper resets the optimizer state after each weight push: the moments, not the
        step counts (``optimizer.reset_moments``)."""
        with activate(self.mesh):
            self.state = self.state.replace(
                opt_state=self._reset_moments(self.state.params, self.state.opt_state))
