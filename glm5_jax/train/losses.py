"""Language-model losses over packed rows: next-token cross entropy, MTP, sequence balance.

Packed rows hold several documents (``segment_ids`` > 0) and padding (0); ``loss_mask`` is 1
exactly on real tokens. Every loss here is a mean over the positions it is defined on, so a
row of padding contributes nothing and losses compare across batch shapes.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import optax

from glm5_jax.model.mtp import shift_left


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean next-token cross entropy; logits [b, s, V] (any float dtype), targets [b, s]."""
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return masked_mean(per_token, mask)


CE_CHUNK = 512  # positions per row whose logits exist at once in chunked_cross_entropy


def chunked_cross_entropy(hidden: jax.Array, kernel: jax.Array, targets: jax.Array,
                          weights: jax.Array, chunk: int = CE_CHUNK) -> jax.Array:
    """sum(per-token CE x weights) without [b, s, V] logits: the head runs on one group of
    positions at a time (rematerialised, so the backward recomputes each group's logits).

    hidden [b, s, d] (the normed final hidden), kernel [d, V], targets/weights [b, s]. Groups
    are strided (positions j, j + n, j + 2n, ...), so a sequence split over devices
    (context parallelism) splits every group the same way. Equals ``cross_entropy`` on
    ``hidden @ kernel`` (tests/test_train_losses.py).
    """
    b, s, d = hidden.shape
    groups = s // chunk if s > chunk and s % chunk == 0 else 1

    def split(x):  # [b, s, ...] -> [groups, b, s // groups, ...]
        return jnp.moveaxis(x.reshape(b, s // groups, groups, *x.shape[2:]), 2, 0)

    @jax.checkpoint
    def group_loss(args):
        h, t, w = args
        with jax.named_scope("lm_head"):  # the head's matmul, named for plan/hlo_flops
            logits = (h.astype(kernel.dtype) @ kernel).astype(jnp.float32)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, t) * w)

    per_group = jax.lax.map(group_loss, (split(hidden), split(targets),
                                         split(weights.astype(jnp.float32))))
    return jnp.sum(per_group)


def mtp_valid_masks(loss_mask: jax.Array, segment_ids: jax.Array, steps: int) -> list[jax.Array]:
    """Per MTP step j: [b, s] 1 where position t's target for that step (``targets[t + j + 1]``)
    is a real token of the same document as position t."""
    masks = []
    for j in range(steps):
        shift = j + 1
        same_document = shift_left(segment_ids, shift) == segment_ids
        masks.append(loss_mask * shift_left(loss_mask, shift, fill=0) * same_document)
    return masks


def mtp_cross_entropy(mtp_logits: jax.Array, targets: jax.Array, loss_mask: jax.Array,
                      segment_ids: jax.Array, step_counts: jax.Array | None = None) -> jax.Array:
    """Mean over MTP steps of each step's cross entropy.

    mtp_logits [steps, b, s, V]: step j (0-based) at position t reads token t + j + 1 and
    predicts token t + j + 2, i.e. ``targets[t + j + 1]``. That target counts only if it is a
    real token of the same document as position t (packing puts other documents next door).
    ``step_counts`` [steps]: divide step j's summed loss by step_counts[j] instead of the number
    of positions it counts here (a micro-batch's part of the whole batch's loss: pass the whole
    batch's counts, ``sum(mtp_valid_masks(...)[j])``).
    """
    def step_sum(j, step_targets, valid):
        per_token = optax.softmax_cross_entropy_with_integer_labels(
            mtp_logits[j].astype(jnp.float32), step_targets)
        return jnp.sum(per_token * valid)

    return _mtp_mean(step_sum, mtp_logits.shape[0], targets, loss_mask, segment_ids, step_counts)


def mtp_chunked_cross_entropy(mtp_hidden: jax.Array, kernel: jax.Array, targets: jax.Array,
                              loss_mask: jax.Array, segment_ids: jax.Array,
                              step_counts: jax.Array | None = None) -> jax.Array:
    """``mtp_cross_entropy`` from the MTP normed hiddens [steps, b, s, d] and the head kernel,
    each step's logits a chunk at a time (``chunked_cross_entropy``)."""
    def step_sum(j, step_targets, valid):
        return chunked_cross_entropy(mtp_hidden[j], kernel, step_targets, valid)

    return _mtp_mean(step_sum, mtp_hidden.shape[0], targets, loss_mask, segment_ids, step_counts)


def _mtp_mean(step_sum, steps, targets, loss_mask, segment_ids, step_counts) -> jax.Array:
    losses = []
    for j, valid in enumerate(mtp_valid_masks(loss_mask, segment_ids, steps)):
        total = step_sum(j, shift_left(targets, j + 1), valid)
        count = jnp.sum(valid.astype(jnp.float32)) if step_counts is None else step_counts[j]
        losses.append(total / jnp.maximum(count, 1.0))
    return jnp.mean(jnp.stack(losses))


def routed_counts(expert_ids: jax.Array, mask: jax.Array, num_experts: int) -> jax.Array:
    """Per sequence, the mask-weighted number of slots routed to each expert, by segment
    sums: expert_ids [..., b, s, k], mask [b, s] -> [..., b, E]. Dropped slots (dynamic
    routing's id == E) count nowhere. Memory O(b * s * k), not a [.., s, k, E] one-hot."""
    lead, (b, s, k) = expert_ids.shape[:-3], expert_ids.shape[-3:]
    flat_ids = expert_ids.reshape((-1, b, s * k))
    slot_weights = jnp.repeat(mask.astype(jnp.float32), k, axis=-1)  # [b, s * k]

    def one_sequence(ids, weights):
        return jax.ops.segment_sum(weights, ids, num_segments=num_experts + 1)[:num_experts]

    counts = jax.vmap(jax.vmap(one_sequence), in_axes=(0, None))(flat_ids, slot_weights)
    return counts.reshape(lead + (b, num_experts))


def sequence_balance_loss(router_outputs: Iterable[tuple[jax.Array, jax.Array]], batch: int,
                          seq: int, loss_mask: jax.Array, num_experts: int,
                          experts_per_token: int) -> jax.Array:
    """DeepSeek-V3's complementary sequence-wise balance loss, averaged over MoE layers.

    For each sequence and layer: sum_i f_i * P_i with f_i = E / (K * T) * (tokens routed to
    expert i) and P_i = mean over tokens of the normalised affinity s_i / sum_j s_j. Small by
    design (the bias rule does the balancing); it only stops one sequence collapsing.

    router_outputs: (expert_ids [..., b * s, k], scores [..., b * s, E]) per router call;
    leading axes (scanned layers) are averaged over.
    """
    mask = loss_mask.astype(jnp.float32)  # [b, s]
    tokens = jnp.maximum(jnp.sum(mask, axis=1), 1.0)  # [b]
    per_layer = []
    for expert_ids, scores in router_outputs:
        lead = scores.shape[:-2]
        scores = scores.reshape(lead + (batch, seq, num_experts)).astype(jnp.float32)
        expert_ids = expert_ids.reshape(lead + (batch, seq, expert_ids.shape[-1]))
        affinity = scores / jnp.maximum(jnp.sum(scores, axis=-1, keepdims=True), 1e-20)
        p = jnp.sum(affinity * mask[..., None], axis=-2) / tokens[:, None]  # [..., b, E]
        counts = routed_counts(expert_ids, mask, num_experts)  # [..., b, E]
        f = counts * (num_experts / experts_per_token) / tokens[:, None]
        per_layer.append(jnp.mean(jnp.sum(f * p, axis=-1)))  # mean over layers, sequences
    if not per_layer:
        return jnp.zeros((), jnp.float32)
    return jnp.mean(jnp.stack(per_layer))
