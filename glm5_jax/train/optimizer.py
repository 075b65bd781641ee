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

Parameter groups: the direction (Adam, or Muon beside Adam) keeps one state per
``"<group>_<rule>"`` label (``"indexer_adamw"``, ``"model_muon"``, ...), each with its own
moments and its own bias-correction count. A DSA stage that freezes a group (stage 1,
``dense_warmup``, trains only the indexer) keeps that group's whole state, count included,
exactly as it was (``keep_frozen_groups``): when the group trains again its Adam/Muon picks
up where it stopped, with bias corrections that count only its own updates. The labels do not
depend on the stage, so the state has one structure and one checkpoint restores in every
stage. Clipping, weight decay and the learning-rate schedule stay global: the schedule's count
is the run's clock (applied updates), the ``learning_rate`` the loop logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import PartitionSpec
from optax.contrib import MuonDimensionNumbers
from optax.transforms import MaskedNode, PartitionState

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


INDEXER_GROUP = "indexer"  # every parameter under an "indexer" module
MODEL_GROUP = "model"  # everything else


def parameter_group(path: tuple[str, ...]) -> str:
    """The group of the parameter at dict-key ``path``: the unit a DSA stage freezes or trains
    (``train_step.trainable_mask`` freezes all but the indexers in stage 1)."""
    return INDEXER_GROUP if "indexer" in path else MODEL_GROUP


def _group_of(label: str) -> str:
    """"indexer_adamw" -> "indexer" (group names have no underscore; orbax joins keys with ".",
    so labels avoid "." and "/")."""
    return label.partition("_")[0]


def _dict_path(keypath: Any) -> tuple[str, ...]:
    return tuple(str(k.key) for k in keypath if isinstance(k, jax.tree_util.DictKey))


class GroupStates(NamedTuple):
    """The direction's states, one per ``"<group>_<rule>"`` label (an optax PartitionState)."""

    by_label: PartitionState


def _by_group(partition: optax.GradientTransformation) -> optax.GradientTransformation:
    """``partition`` with its state marked as per-group (what ``keep_frozen_groups`` looks for)."""

    def update_fn(updates, state, params=None):
        updates, inner = partition.update(updates, state.by_label, params)
        return updates, GroupStates(inner)

    return optax.GradientTransformation(lambda params: GroupStates(partition.init(params)), update_fn)


def keep_frozen_groups(new_state: Any, old_state: Any, trainable: Any) -> Any:
    """``new_state`` with every frozen group's direction state (moments, Muon momentum,
    bias-correction count) taken from ``old_state``, bit for bit.

    ``trainable``: a tree of bools like the params; a group is frozen when none of its
    parameters is trainable. A group with both kinds cannot keep one count for both: an error
    (at trace time). States without ``GroupStates`` (another optimizer) are returned as they are.
    """
    kinds: dict[str, set[bool]] = {}
    for keypath, flag in jax.tree_util.tree_flatten_with_path(trainable)[0]:
        kinds.setdefault(parameter_group(_dict_path(keypath)), set()).add(bool(flag))
    mixed = sorted(group for group, flags in kinds.items() if len(flags) > 1)
    if mixed:
        raise ValueError(f"parameter groups {mixed} are partly trainable: a stage must freeze or "
                         "train whole groups (optimizer.parameter_group)")
    frozen = {group for group, flags in kinds.items() if flags == {False}}

    def is_groups(x: Any) -> bool:
        return isinstance(x, GroupStates)

    def pick(new: Any, old: Any) -> Any:
        if not is_groups(new):
            return new
        states = {label: old.by_label.inner_states[label] if _group_of(label) in frozen else state
                  for label, state in new.by_label.inner_states.items()}
        return GroupStates(PartitionState(inner_states=states))

    return jax.tree.map(pick, new_state, old_state, is_leaf=is_groups)


def make_optimizer(config: ml_collections.ConfigDict, logical_specs: Any
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule) for the params whose logical PartitionSpecs are ``logical_specs``."""
    schedule = warmup_cosine(config.learning_rate, config.warmup_steps, config.total_steps,
                             config.min_learning_rate_ratio)
    adam = optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
    if config.optimizer == "adamw":
        rules = {"adamw": adam}
        rule_tree = jax.tree.map(lambda spec: "adamw", logical_specs,
                                 is_leaf=lambda x: isinstance(x, PartitionSpec))
    elif config.optimizer == "muon":
        dims_tree = muon_dimension_numbers(logical_specs, config.muon_split_heads)
        rule_tree = jax.tree.map(lambda d: "adamw" if d is None else "muon", dims_tree,
                                 is_leaf=is_muon_leaf)
        dims_fn = _dims_for_masked_tree(dims_tree)
        rules = {"adamw": adam, "muon": optax.chain(
            scale_by_muon(beta=config.muon_beta, ns_steps=config.muon_ns_steps,
                          weight_dimension_numbers=dims_fn),
            scale_muon_update(config.muon_consistent_rms, dims_fn),
        )}
    else:
        raise ValueError(f"optimizer={config.optimizer!r}; allowed: 'adamw', 'muon'")
    labels = jax.tree_util.tree_map_with_path(
        lambda keypath, rule: f"{parameter_group(_dict_path(keypath))}_{rule}", rule_tree)
    direction = _by_group(optax.partition(
        {label: rules[label.partition("_")[2]] for label in sorted(set(jax.tree.leaves(labels)))},
        labels))
    optimizer = optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        direction,
        optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask(logical_specs)),
        optax.scale_by_learning_rate(schedule),
    )
    return optimizer, schedule
