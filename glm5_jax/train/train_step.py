"""One training step: forward, losses, gradients (accumulated), optimizer, routing-bias rule.

``make_train_step`` returns a pure function ``(state, batch) -> (state, metrics)`` that the
loop compiles once per attention stage (``experiment.STAGES``) with named shardings. Inside:

1. The batch splits into ``grad_accum_steps`` micro-batches (row i goes to micro-batch
   i % accum, so every micro-batch is spread over all data-parallel devices). Each
   micro-batch's loss terms count as their part of the whole batch's (token means by its share
   of the batch's tokens, the balance loss by its share of rows, MTP step j divided by the
   whole batch's count of that step's positions), so the accumulated gradient equals the full
   batch's.
2. The forward pass captures each layer's attention input and router outputs
   (``capture_intermediates``) for the indexer KL and the balance loss, beside the expert
   loads the MoE layers sow.
3. The objective: stages "dense" (dense attention) and "sparse" train everything on
   CE + w_mtp * MTP + w_bal * balance + w_idx * indexer KL; stage "dense_warmup" runs
   attention dense and trains only the indexer on its KL (every other parameter, and its
   optimizer state, is carried over unchanged, bit for bit).
4. Non-finite loss or gradient norm: nothing is applied (parameters, optimizer state and
   routing biases stay as they were) and ``skipped_steps`` counts it. The learning-rate
   schedule follows applied updates, so a skip does not consume a schedule step.
5. The routing biases move by the aux-loss-free rule (applied steps of the stages that train
   the model, not "dense_warmup").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn
from flax import traverse_util

from glm5_jax.config import ModelConfig
from glm5_jax.model.attention_mask import attention_mask
from glm5_jax.model.rope import rope_angles
from glm5_jax.model.transformer import GLM5Model
from glm5_jax.train.experiment import DENSE, DENSE_WARMUP
from glm5_jax.train.indexer_loss import indexer_loss_and_recall
from glm5_jax.train.losses import (
    chunked_cross_entropy,
    mtp_chunked_cross_entropy,
    mtp_valid_masks,
    sequence_balance_loss,
)
from glm5_jax.train.optimizer import keep_frozen_groups
from glm5_jax.train.routing_bias import (
    collect_expert_loads,
    load_imbalance,
    update_routing_biases,
)
from glm5_jax.train.train_state import TrainState

Batch = dict[str, jax.Array]
CAPTURED_MODULES = ("input_layernorm", "gate")


def _capture(module: nn.Module, method_name: str) -> bool:
    """Keep each layer's attention input and each router's outputs."""
    return method_name == "__call__" and module.name in CAPTURED_MODULES


def forward_config(model_config: ModelConfig, stage: str, seq_len: int) -> ModelConfig:
    """Dense stages run attention dense: with index_topk >= seq_len every causal key is
    selected (the model decides statically); the parameters are the same."""
    if stage in (DENSE, DENSE_WARMUP):
        return model_config.replace(index_topk=max(model_config.index_topk, seq_len))
    return model_config


def trainable_mask(params: Any, stage: str) -> Any:
    """Static tree of bools: which parameters the stage updates (dense_warmup: the indexers)."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict(
        {path: stage != DENSE_WARMUP or "indexer" in path for path in flat})


def _router_outputs(intermediates: Any) -> list[tuple[jax.Array, jax.Array]]:
    outputs = []
    for path, calls in traverse_util.flatten_dict(intermediates).items():
        if path[-2:] == ("gate", "__call__"):
            outputs.extend((expert_ids, scores) for _, expert_ids, scores in calls)
    return outputs


def make_loss_fn(model_config: ModelConfig, config: ml_collections.ConfigDict, stage: str
                 ) -> Callable[..., tuple[jax.Array, dict]]:
    """loss_fn(params, routing, batch, token_share, rng, whole_batch=None) -> (weighted objective, aux).

    ``whole_batch``: ``batch_counts`` of the batch that ``batch`` is a micro-batch of. Each term
    then counts as its part of the whole batch's: token means (CE, indexer KL) by
    ``token_share``, the balance loss (a mean over rows) by the share of rows, and MTP step j
    (a mean over its own valid positions) divided by the whole batch's count of them."""
    seq_len = config.seq_len
    model = GLM5Model(forward_config(model_config, stage, seq_len))
    has_mtp = model_config.num_mtp_layers > 0
    has_moe = model_config.num_moe_layers > 0 and not model_config.moe_as_dense

    def loss_fn(params, routing, batch: Batch, token_share: jax.Array, rng: jax.Array,
                whole_batch: dict | None = None):
        (hidden, head_kernel, mtp_hidden), collections = model.apply(
            {"params": params, "routing": routing}, batch["inputs"], batch["positions"],
            batch["segment_ids"], return_mtp=has_mtp, return_hidden=True,
            mutable=["intermediates"], capture_intermediates=_capture, rngs={"dropout": rng})
        intermediates = collections["intermediates"]
        targets, loss_mask, segment_ids = batch["targets"], batch["loss_mask"], batch["segment_ids"]
        batch_size, seq = targets.shape

        # Logits a chunk of positions at a time: [b, s, vocab] never exists.
        tokens = jnp.maximum(jnp.sum(loss_mask.astype(jnp.float32)), 1.0)
        terms = {"ce_loss": chunked_cross_entropy(hidden, head_kernel, targets, loss_mask) / tokens}
        terms["mtp_loss"] = (mtp_chunked_cross_entropy(
            mtp_hidden, head_kernel, targets, loss_mask, segment_ids,
            None if whole_batch is None else whole_batch["mtp"]) if has_mtp else jnp.zeros(()))
        # The auxiliary losses cover every real token, also where loss_mask covers only some
        # (data.loss_only_after); without it the two masks are the same.
        real = (segment_ids > 0).astype(jnp.float32)
        terms["balance_loss"] = (
            sequence_balance_loss(_router_outputs(intermediates), batch_size, seq, real,
                                  model_config.n_routed_experts, model_config.max_experts_per_tok)
            if has_moe and config.balance_loss_weight > 0 else jnp.zeros(()))
        cos, sin = rope_angles(model_config, batch["positions"])
        mask = attention_mask(seq, segment_ids, batch_size)
        terms["indexer_kl"], terms["indexer_recall"] = indexer_loss_and_recall(
            model_config, stage, params, intermediates, cos, sin, mask, real)

        shares = dict.fromkeys(terms, token_share)
        if whole_batch is not None:
            shares["mtp_loss"] = 1.0  # already divided by the whole batch's counts
            shares["balance_loss"] = batch_size / whole_batch["rows"]
        terms = {k: v * shares[k] for k, v in terms.items()}
        indexer_term = config.indexer_loss_weight * terms["indexer_kl"]
        if stage != DENSE_WARMUP:
            objective = (terms["ce_loss"] + config.mtp_loss_weight * terms["mtp_loss"]
                         + config.balance_loss_weight * terms["balance_loss"] + indexer_term)
        else:
            objective = indexer_term
        terms["loss"] = objective
        aux = {"terms": terms, "loads": collect_expert_loads(intermediates)}
        return objective, aux

    return loss_fn


def batch_counts(model_config: ModelConfig, batch: Batch) -> dict:
    """What the whole batch's non-token-mean terms divide by: rows, and MTP step j's valid positions."""
    counts = {"rows": batch["loss_mask"].shape[0]}
    if model_config.num_mtp_layers:
        counts["mtp"] = jnp.stack([jnp.sum(m) for m in mtp_valid_masks(
            batch["loss_mask"], batch["segment_ids"], model_config.mtp_num_steps)])
    return counts


def _microbatches(batch: Batch, accum: int) -> Batch:
    """[B, ...] -> [accum, B // accum, ...], row i in micro-batch i % accum."""
    def split(x):
        x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
        names = (None, "activation_batch") + ("activation_length",) * (x.ndim - 2)
        return nn.with_logical_constraint(x, names)
    return jax.tree.map(split, batch)


def make_train_step(model_config: ModelConfig, config: ml_collections.ConfigDict,
                    optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    stage: str) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    grad_fn = jax.value_and_grad(make_loss_fn(model_config, config, stage), has_aux=True)
    accum = config.grad_accum_steps

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        rng, step_rng = jax.random.split(state.rng)
        total_tokens = jnp.maximum(jnp.sum(batch["loss_mask"]), 1.0)
        whole_batch = batch_counts(model_config, batch)

        def micro_grads(micro: Batch, micro_rng: jax.Array):
            share = jnp.sum(micro["loss_mask"]) / total_tokens
            (_, aux), grads = grad_fn(state.params, state.routing, micro, share, micro_rng,
                                      None if accum == 1 else whole_batch)
            return grads, aux

        if accum == 1:
            grads, aux = micro_grads(batch, step_rng)
        else:
            micro = _microbatches(batch, accum)
            micro_rngs = jax.random.split(step_rng, accum)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                 jax.eval_shape(micro_grads, jax.tree.map(lambda x: x[0], micro),
                                                micro_rngs[0]))

            def accumulate(carry, inputs):
                return jax.tree.map(jnp.add, carry, micro_grads(*inputs)), None

            (grads, aux), _ = jax.lax.scan(accumulate, zeros, (micro, micro_rngs))

        grad_norm = optax.tree.norm(grads)
        terms = aux["terms"]
        finite = jnp.isfinite(terms["loss"]) & jnp.isfinite(grad_norm)

        def apply(_):
            with jax.named_scope("optimizer"):  # its matmuls (Muon) are named for plan/hlo_flops
                updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            if stage == DENSE_WARMUP:
                # Frozen parameters are carried over exactly, not "+ 0" (weight decay would move
                # them), and so is their optimizer state: Adam's moments would otherwise decay
                # toward their zero gradients, and a shared bias-correction count would run on
                # while they wait. The optimizer keeps one state (moments, Muon momentum, count)
                # per parameter group (optimizer.py), and the frozen groups' states are taken
                # from before the step; the learning-rate schedule is the run's clock and moves
                # on. XLA drops the frozen groups' discarded updates.
                trainable = trainable_mask(state.params, stage)
                params = jax.tree.map(lambda new, old, train: new if train else old,
                                      params, state.params, trainable)
                opt_state = keep_frozen_groups(opt_state, state.opt_state, trainable)
                return params, opt_state, state.routing
            return params, opt_state, update_routing_biases(
                state.routing, aux["loads"], config.routing_bias_update_rate)

        def skip(_):
            return state.params, state.opt_state, state.routing

        params, opt_state, routing = jax.lax.cond(finite, apply, skip, None)
        skipped = state.skipped_steps + jnp.where(finite, 0, 1).astype(jnp.int32)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  routing=routing, rng=rng, skipped_steps=skipped)
        metrics = dict(terms)
        metrics.update(
            # The optimizer counts applied updates only: its schedule position excludes skips.
            grad_norm=grad_norm, learning_rate=schedule(state.step - state.skipped_steps),
            skipped_steps=skipped, step_applied=finite,
            expert_load_max_over_mean=load_imbalance(aux["loads"]))
        return new_state, metrics

    return train_step
