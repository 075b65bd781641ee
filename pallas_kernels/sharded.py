"""shard_map wrappers: each device runs the kernels on its local shard.

Why: a pallas_call is opaque to the SPMD partitioner, so under ``jax.jit`` with sharded
operands XLA would gather everything onto every device before the kernel. These
wrappers state the partitioning explicitly:

* grouped matmul -- experts over ``expert_axis``: each shard holds ``local`` experts,
  calls the kernel with ``group_offset = shard_index * local`` (rows of other experts
  come out zero) and the partial outputs are ``psum``-ed over the expert axis. Rows may
  also be split over ``row_axes`` (data parallel), each row shard sorted on its own with
  its own row of ``group_sizes``.
* sparse attention -- batch over ``batch_axes``, heads over ``head_axis``; a shared
  latent (kv_heads == 1) is replicated over the head axis.
* indexer scores -- batch over ``batch_axes``; the few index heads stay whole, so the
  [q_len, kv_len] scores need no reduction.

Axis names missing from the mesh are ignored, so one call site serves every mesh.
Gradients flow through (shard_map transposes psum into the right collective).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from pallas_kernels.grouped_matmul import grouped_matmul
from pallas_kernels.indexer_scores import indexer_scores
from pallas_kernels.sparse_attention import sparse_topk_attention

AxisNames = str | Sequence[str] | None


def _present(mesh: Mesh, axes: AxisNames) -> tuple[str, ...] | str | None:
    """The axes that exist in ``mesh`` (None when none do), as a PartitionSpec entry."""
    if axes is None:
        return None
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    kept = tuple(a for a in names if a in mesh.axis_names)
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else kept


def _size(mesh: Mesh, entry) -> int:
    if entry is None:
        return 1
    names = (entry,) if isinstance(entry, str) else entry
    size = 1
    for name in names:
        size *= mesh.shape[name]
    return size


def sharded_grouped_matmul(
    lhs: jax.Array,  # [m, k] (rows split over row_axes, if any)
    rhs: jax.Array,  # [num_groups, k, n] experts split over expert_axis
    group_sizes: jax.Array,  # int32 [num_groups], or [row_shards, num_groups] with row_axes
    *,
    mesh: Mesh,
    expert_axis: str = "expert",
    row_axes: AxisNames = None,
    **kernel_kwargs,
) -> jax.Array:  # [m, n], rows split like lhs, replicated over the expert axis
    """Expert-parallel grouped matmul (see module docstring)."""
    experts = _present(mesh, expert_axis)
    rows = _present(mesh, row_axes)
    num_expert_shards = _size(mesh, experts)
    if rhs.shape[0] % num_expert_shards:
        raise ValueError(f"{rhs.shape[0]} experts do not split over {num_expert_shards} shards")
    local = rhs.shape[0] // num_expert_shards
    if rows is not None and group_sizes.ndim != 2:
        raise ValueError("with row_axes, group_sizes must be [row_shards, num_groups]")
    sizes_spec = P(rows, None) if rows is not None else P(None)

    def local_matmul(lhs_l, rhs_l, sizes_l):
        sizes_l = sizes_l.reshape(-1)
        offset = 0 if experts is None else jax.lax.axis_index(experts) * local
        out = grouped_matmul(lhs_l, rhs_l, sizes_l, group_offset=offset, **kernel_kwargs)
        return out if experts is None else jax.lax.psum(out, experts)

    return jax.shard_map(
        local_matmul,
        mesh=mesh,
        in_specs=(P(rows, None), P(experts, None, None), sizes_spec),
        out_specs=P(rows, None),
        check_vma=False,
    )(lhs, rhs, group_sizes)


def sharded_sparse_topk_attention(
    q: jax.Array,  # [batch, q_len, heads, d_qk]
    k: jax.Array,  # [batch, kv_len, kv_heads, d_qk]
    v: jax.Array,  # [batch, kv_len, kv_heads, d_v]
    topk_indices: jax.Array,  # int32 [batch, q_len, topk]
    *,
    mesh: Mesh,
    scale: float,
    batch_axes: AxisNames = ("data", "fsdp"),
    head_axis: AxisNames = "tensor",
    **kernel_kwargs,
) -> tuple[jax.Array, jax.Array]:
    """Sparse attention with batch over batch_axes and heads over head_axis."""
    batch = _present(mesh, batch_axes)
    heads = _present(mesh, head_axis)
    kv_heads = None if k.shape[2] == 1 else heads
    q_spec = P(batch, None, heads, None)
    kv_spec = P(batch, None, kv_heads, None)
    fn = lambda *args: sparse_topk_attention(*args, scale=scale, **kernel_kwargs)
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(q_spec, kv_spec, kv_spec, P(batch, None, None)),
        out_specs=(q_spec, P(batch, None, heads)),
        check_vma=False,
    )(q, k, v, topk_indices)


def sharded_indexer_scores(
    q: jax.Array,  # [batch, q_len, index_heads, d]
    k: jax.Array,  # [batch, kv_len, d]
    weights: jax.Array,  # [batch, q_len, index_heads]
    *,
    mesh: Mesh,
    batch_axes: AxisNames = ("data", "fsdp"),
    q_offset: int | jax.Array = 0,
    **kernel_kwargs,
) -> jax.Array:  # f32 [batch, q_len, kv_len]
    """Indexer scores with batch over batch_axes (replicated over the other axes)."""
    batch = _present(mesh, batch_axes)
    offset = jnp.asarray(q_offset, jnp.int32)
    fn = lambda q_l, k_l, w_l, off: indexer_scores(q_l, k_l, w_l, q_offset=off, **kernel_kwargs)
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(P(batch, None, None, None), P(batch, None, None), P(batch, None, None), P()),
        out_specs=P(batch, None, None),
        check_vma=False,
    )(q, k, weights, offset)
