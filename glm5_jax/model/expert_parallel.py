"""Routed experts on a device mesh: each device sends its tokens to the devices that hold their
experts and gets the results back by all-to-all (expert parallelism, as DeepSeek and MaxText).

Inside ``shard_map`` every device holds

* its own tokens: rows over every batch-like mesh axis (``data``, ``fsdp``, ``expert``, and
  ``context`` when the sequence is split): the expert axis doubles as a batch axis, so
  nothing outside the MoE is computed twice;
* E / G experts (``G`` = size of the ``expert`` axis), their width split over ``tensor``;
  the weights are stored FSDP-sharded over ``fsdp`` too and gathered for the layer (the
  shard_map's in-spec leaves ``fsdp`` out, so XLA all-gathers them in, reduce-scatters their
  gradients out).

Per device: sort its (token, slot) rows by expert, send each expert shard its contiguous run,
receive the rows for its local experts from every device, run the grouped matmuls on them
(``local_expert_mlp``: ``ragged_dot``, the Pallas GMM or padded blocks), send the results back,
un-sort and combine with the router weights. Two transports:

* ``padded``: ``lax.all_to_all`` over [G, C, d] buffers, C rows per (sender, receiver) pair.
  Runs everywhere (XLA:CPU included); dropless when C = all of a device's rows.
* ``ragged``: ``lax.ragged_all_to_all``: each run travels at its own length into one receive
  buffer. No XLA:CPU lowering (jax 0.10); compiled for TPU/GPU.

``capacity_factor`` = 0 is dropless (buffers sized for the worst case: every row to one
device). c > 0 sizes a device's receive buffer at c x its own row count (the balanced load);
rows past it are dropped (output 0, like dynamic routing's dropped slots), the last senders'
and each run's last experts first, deterministically.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

TOKEN_AXES = ("data", "fsdp", "expert", "context")
DISPATCHES = ("padded", "ragged")


def local_expert_mlp(rows: jax.Array, group_sizes: jax.Array, wi_gate: jax.Array,
                     wi_up: jax.Array, wo: jax.Array, impl: str) -> jax.Array:
    """SwiGLU experts on rows sorted by expert: rows [m, d], group_sizes [E_local] (rows past
    their sum belong to no expert and come out 0), weights [E_local, d, f] / [E_local, f, d]."""
    if impl == "dense":
        ends = jnp.cumsum(group_sizes)
        expert = jnp.searchsorted(ends, jnp.arange(rows.shape[0]), side="right")  # E_local: no expert
        return all_experts_mlp(rows, jax.nn.one_hot(expert, wi_gate.shape[0], dtype=rows.dtype),
                               wi_gate, wi_up, wo)
    if impl == "blocked":
        from glm5_jax.model.blocked_experts import block_layout

        layout = block_layout(group_sizes, rows.shape[0])
        blocks = layout.to_blocks(rows)
        hidden = jax.nn.silu(layout.matmul(blocks, wi_gate)) * layout.matmul(blocks, wi_up)
        return layout.from_blocks(layout.matmul(hidden, wo))
    if impl == "pallas":
        from pallas_kernels.grouped_matmul import grouped_matmul

        def matmul(lhs, rhs):
            return grouped_matmul(lhs, rhs, group_sizes,
                                  preferred_element_type=jnp.float32).astype(lhs.dtype)
    else:
        def matmul(lhs, rhs):
            return jax.lax.ragged_dot(lhs, rhs, group_sizes)
    hidden = jax.nn.silu(matmul(rows, wi_gate)) * matmul(rows, wi_up)
    return matmul(hidden, wo)


def all_experts_mlp(x: jax.Array, gates: jax.Array, wi_gate: jax.Array, wi_up: jax.Array,
                    wo: jax.Array) -> jax.Array:
    """``moe_impl="dense"``: every row through every expert, each output scaled by the row's gate
    for it (0 for experts it did not pick): x [n, d], gates [n, E] -> [n, d]. E / k times the
    routed FLOPs, but three matmuls and no sort, gather or scatter: the fastest form when rows
    and experts are few (a small model's decode on CPU), the wrong one at scale."""
    hidden = (jax.nn.silu(jnp.einsum("nd,edf->nef", x, wi_gate))
              * jnp.einsum("nd,edf->nef", x, wi_up))
    return jnp.einsum("nef,efd->nd", hidden * gates[..., None].astype(hidden.dtype), wo)


def sorted_rows(x: jax.Array, expert_ids: jax.Array, num_experts: int):
    """(order, rows sorted by expert [n * k, d], their ids, rows per expert [E])."""
    k = expert_ids.shape[1]
    flat = jnp.asarray(expert_ids).reshape(-1)
    order = jnp.argsort(flat, stable=True)
    counts = jnp.bincount(flat, length=num_experts + 1)[:num_experts].astype(jnp.int32)
    return order, x[order // k], flat[order], counts


def combine(out_rows: jax.Array, order: jax.Array, weights: jax.Array) -> jax.Array:
    """Rows in sorted order back to [n, k, d], weighted sum over the k slots -> [n, d]."""
    n, k = weights.shape
    unsorted = jnp.zeros_like(out_rows).at[order].set(out_rows).reshape(n, k, -1)
    return jnp.einsum("nkd,nk->nd", unsorted, weights.astype(unsorted.dtype))


def routed_experts_single(x, weights, expert_ids, wi_gate, wi_up, wo, impl):
    """One device, every expert local: x [n, d], weights/expert_ids [n, k] -> [n, d]."""
    if impl == "dense":  # no sort: each token's gates over all experts (ids == E: dropped, gate 0)
        gates = jnp.einsum("nk,nke->ne", weights.astype(x.dtype),
                           jax.nn.one_hot(expert_ids, wi_gate.shape[0], dtype=x.dtype))
        return all_experts_mlp(x, gates, wi_gate, wi_up, wo)
    order, rows, _, counts = sorted_rows(x, expert_ids, wi_gate.shape[0])
    return combine(local_expert_mlp(rows, counts, wi_gate, wi_up, wo, impl), order, weights)


def _exclusive_cumsum(x: jax.Array, axis: int = 0) -> jax.Array:
    return jnp.cumsum(x, axis=axis) - x


def receive_rows(rows_per_device: int, shards: int, capacity_factor: float) -> int:
    """Rows one device's receive buffer holds: the worst case (every device sends it all its
    rows) when dropless, else capacity_factor x its own rows."""
    if capacity_factor <= 0:
        return rows_per_device * shards
    return min(rows_per_device * shards, max(1, math.ceil(capacity_factor * rows_per_device)))


def _expert_compute(recv_rows, recv_local_ids, experts_local, wi_gate, wi_up, wo, impl, width_axis):
    """Sort received rows by local expert, run the MLPs, restore the received order."""
    local_order = jnp.argsort(recv_local_ids, stable=True)
    group_sizes = jnp.bincount(recv_local_ids, length=experts_local + 1)[:experts_local]
    out = local_expert_mlp(recv_rows[local_order], group_sizes.astype(jnp.int32), wi_gate,
                           wi_up, wo, impl)
    if width_axis:  # each tensor shard computed part of the expert width
        out = jax.lax.psum(out, width_axis)
    return jnp.zeros_like(out).at[local_order].set(out)


def _padded_exchange(rows, ids, counts, experts_local, shards, capacity, compute):
    """Dispatch/compute/return through [G, C, d] all-to-alls; returns rows in sorted order."""
    total, d = rows.shape
    send = counts.reshape(shards, experts_local).sum(axis=1)
    dest = ids // experts_local  # == shards for dropped slots (id == E)
    start = _exclusive_cumsum(send)
    rank = jnp.arange(total) - start[jnp.minimum(dest, shards - 1)]
    slot = jnp.where((dest < shards) & (rank < capacity), dest * capacity + rank, shards * capacity)
    send_rows = jnp.zeros((shards * capacity, d), rows.dtype).at[slot].set(rows, mode="drop")
    send_ids = jnp.full((shards * capacity,), experts_local, jnp.int32).at[slot].set(
        ids % experts_local, mode="drop")
    recv_rows = jax.lax.all_to_all(send_rows.reshape(shards, capacity, d), "expert", 0, 0)
    recv_ids = jax.lax.all_to_all(send_ids.reshape(shards, capacity), "expert", 0, 0)
    out = compute(recv_rows.reshape(shards * capacity, d), recv_ids.reshape(-1))
    back = jax.lax.all_to_all(out.reshape(shards, capacity, d), "expert", 0, 0)
    return jnp.take(back.reshape(shards * capacity, d), slot, axis=0, mode="fill", fill_value=0)


def _ragged_exchange(rows, ids, counts, experts_local, shards, buffer_rows, compute):
    """Dispatch/compute/return through ragged all-to-alls into one receive buffer."""
    total, d = rows.shape
    send = counts.reshape(shards, experts_local).sum(axis=1)
    sent = jax.lax.all_gather(send, "expert")  # [sender, receiver]
    # Receivers accept senders in order until their buffer is full; a sender's run starts
    # where the earlier senders' accepted rows end.
    recv_offsets = jnp.minimum(_exclusive_cumsum(sent, axis=0), buffer_rows)  # [sender, receiver]
    allowed = jnp.clip(buffer_rows - recv_offsets, 0, sent)
    run_starts = _exclusive_cumsum(sent, axis=1)  # where each run starts in its sender's rows
    me = jax.lax.axis_index("expert")
    send_sizes, recv_sizes = allowed[me], allowed[:, me]

    def exchange(operand, output, in_offsets, sizes_out, out_offsets, sizes_in):
        return jax.lax.ragged_all_to_all(operand, output, in_offsets, sizes_out, out_offsets,
                                         sizes_in, axis_name="expert")

    recv_rows = exchange(rows, jnp.zeros((buffer_rows, d), rows.dtype), run_starts[me],
                         send_sizes, recv_offsets[me], recv_sizes)
    recv_ids = exchange((ids % experts_local)[:, None],
                        jnp.full((buffer_rows, 1), experts_local, jnp.int32), run_starts[me],
                        send_sizes, recv_offsets[me], recv_sizes)[:, 0]
    out = compute(recv_rows, recv_ids)
    # The way back: my received runs return to where each sender's run started.
    return exchange(out, jnp.zeros((total, d), out.dtype), recv_offsets[:, me], recv_sizes,
                    run_starts[:, me], send_sizes)


def routed_experts_sharded(x, weights, expert_ids, wi_gate, wi_up, wo, *, mesh, impl: str,
                           dispatch: str = "padded", capacity_factor: float = 0.0):
    """Expert-parallel routed experts under ``mesh``; same maths as ``routed_experts_single``.

    x [n, d], weights/expert_ids [n, k] (id E = dropped slot), wi_* [E, d, f], wo [E, f, d]
    -> (out [n, d], rows per expert over all devices [E] int32).
    """
    if dispatch not in DISPATCHES:
        raise ValueError(f"expert dispatch {dispatch!r} is unknown; allowed: {list(DISPATCHES)}")
    sizes = dict(mesh.shape)
    num_experts = wi_gate.shape[0]
    token_axes = tuple(a for a in TOKEN_AXES if sizes.get(a, 1) > 1)
    shards = sizes.get("expert", 1)
    width_axis = "tensor" if sizes.get("tensor", 1) > 1 else None
    if num_experts % shards:
        raise ValueError(f"n_routed_experts={num_experts} must be divisible by the mesh's "
                         f"expert axis ({shards})")
    experts_local = num_experts // shards
    token_shards = math.prod(sizes[a] for a in token_axes)
    n = x.shape[0]
    pad = -n % token_shards  # pad rows route nowhere (id E) and come out 0
    if pad:
        x = jnp.pad(x, ((0, pad), (0, 0)))
        weights = jnp.pad(weights, ((0, pad), (0, 0)))
        expert_ids = jnp.pad(expert_ids, ((0, pad), (0, 0)), constant_values=num_experts)
    rows_per_device = (n + pad) // token_shards * expert_ids.shape[1]

    def per_device(x_l, w_l, ids_l, gate_l, up_l, wo_l):
        order, rows, ids, counts = sorted_rows(x_l, ids_l, num_experts)
        load = jax.lax.psum(counts, token_axes) if token_axes else counts

        def compute(recv_rows, recv_ids):
            return _expert_compute(recv_rows, recv_ids, experts_local, gate_l, up_l, wo_l, impl,
                                   width_axis)

        if shards == 1:
            out_rows = compute(rows, jnp.where(ids < num_experts, ids, experts_local))
        elif dispatch == "padded":
            capacity = rows_per_device if capacity_factor <= 0 else receive_rows(
                rows_per_device, shards, capacity_factor) // shards or 1
            out_rows = _padded_exchange(rows, ids, counts, experts_local, shards, capacity, compute)
        else:
            out_rows = _ragged_exchange(rows, ids, counts, experts_local, shards,
                                        receive_rows(rows_per_device, shards, capacity_factor),
                                        compute)
        return combine(out_rows, order, w_l), load

    expert_spec = "expert" if shards > 1 else None
    rows_spec = P(token_axes or None, None)
    out, load = jax.shard_map(
        per_device, mesh=mesh,
        in_specs=(rows_spec, rows_spec, rows_spec, P(expert_spec, None, width_axis),
                  P(expert_spec, None, width_axis), P(expert_spec, width_axis, None)),
        out_specs=(rows_spec, P()), check_vma=False,
    )(x, weights, expert_ids, wi_gate, wi_up, wo)
    return out[:n], load
