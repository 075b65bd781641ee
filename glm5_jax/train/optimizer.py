"""The optimizers: AdamW, and Muon (with Muon Split) beside AdamW for non-matrix parameters.

Both are one optax chain with the same outer shape, so weight decay and the learning rate
mean the same thing whichever is chosen:

    clip_by_global_norm -> (adam | muon-or-adam by parameter) -> decoupled weight decay (masked)
                        -> scale by -schedule

Muon's updates are rescaled to AdamW's RMS (``consistent_rms``, Moonlight's recipe,
arXiv:2502.16982) so one learning rate and one weight decay serve both groups. Muon's
orthogonalisation is optax's maths with batch axes kept apart (``muon.py``: sharded expert
stacks stay sharded); the axes it orthogonalises over come from ``muon_split`` (per head for
the MLA up-projections).

Norm weights/biases are never decayed. The MoE routing bias is not a parameter at all (its
own variable collection), so no optimizer can touch it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import PartitionSpec
from optax.contrib import MuonDimensionNumbers
from optax.transforms import MaskedNode

from glm5_jax.train.muon import scale_by_muon
from glm5_jax.train.muon_split import is_muon_leaf, muon_dimension_numbers
from glm5_jax.train.schedule import warmup_cosine


def _is_masked(x: Any) -> bool:
    return isinstance(x, MaskedNode)


def weight_decay_mask(logical_specs: Any) -> Any:
    """True for parameters that decay: everything but norm weights and biases."""
    return jax.tree.map(lambda spec: not spec or spec[-1] != "norm", logical_specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def _fan_in_out(shape: tuple[int, ...], dims: MuonDimensionNumbers) -> tuple[int, int]:
    reduction = dims.reduction_axis if isinstance(dims.reduction_axis, tuple) else (dims.reduction_axis,)
    output = dims.output_axis if isinstance(dims.output_axis, tuple) else (dims.output_axis,)
    return (math.prod(shape[a] for a in reduction), math.prod(shape[a] for a in output))


def scale_muon_update(consistent_rms: float, dims_fn: Callable[[Any], Any]
                      ) -> optax.GradientTransformation:
    """Rescale orthogonalised updates: to AdamW's RMS (``consistent_rms`` > 0:
    sqrt(max(fan_in, fan_out)) * rms) or by Keller Jordan's sqrt(max(1, fan_out / fan_in))."""

    def scale(update, dims):
        if _is_masked(update):
            return update
        fan_in, fan_out = _fan_in_out(update.shape, dims)
        if consistent_rms > 0:
            factor = math.sqrt(max(fan_in, fan_out)) * consistent_rms
        else:
            factor = math.sqrt(max(1.0, fan_out / fan_in))
        return update * jnp.asarray(factor, update.dtype)

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(scale, updates, dims_fn(updates), is_leaf=_is_masked), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _dims_for_masked_tree(dims_tree: Any) -> Callable[[Any], Any]:
    """Inside ``optax.partition`` each branch sees MaskedNode where another branch owns the
    leaf; Muon's dimension-number tree must carry the same MaskedNodes."""

    def dims_fn(updates):
        return jax.tree.map(lambda u, d: u if _is_masked(u) else d, updates, dims_tree,
                            is_leaf=_is_masked)

    return dims_fn


def make_optimizer(config: ml_collections.ConfigDict, logical_specs: Any
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule) for the params whose logical PartitionSpecs are ``logical_specs``."""
    schedule = warmup_cosine(config.learning_rate, config.warmup_steps, config.total_steps,
                             config.min_learning_rate_ratio)
    adam = optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
    if config.optimizer == "adamw":
        direction = adam
    elif config.optimizer == "muon":
        dims_tree = muon_dimension_numbers(logical_specs, config.muon_split_heads)
        labels = jax.tree.map(lambda d: "adamw" if d is None else "muon", dims_tree,
                              is_leaf=is_muon_leaf)
        dims_fn = _dims_for_masked_tree(dims_tree)
        muon = optax.chain(
            scale_by_muon(beta=config.muon_beta, ns_steps=config.muon_ns_steps,
                          weight_dimension_numbers=dims_fn),
            scale_muon_update(config.muon_consistent_rms, dims_fn),
        )
        direction = optax.partition({"muon": muon, "adamw": adam}, labels)
    else:
        raise ValueError(f"optimizer={config.optimizer!r}; allowed: 'adamw', 'muon'")
    optimizer = optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        direction,
        optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask(logical_specs)),
        optax.scale_by_learning_rate(schedule),
    )
    return optimizer, schedule
