"""Calls into ``pallas_kernels`` from model code: directly on one device, under ``shard_map``
when a multi-device mesh is active (``sharding.activate``), so each device runs its own shard.

A pallas_call is opaque to the SPMD partitioner; without the explicit partitioning XLA would
gather every operand onto every device first. Kernels are imported lazily so the default
(``xla``) paths never import Pallas.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def active_mesh():
    """The mesh set by ``sharding.activate`` if it spans more than one device, else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    return mesh


def _present(mesh, axes):
    names = tuple(a for a in ((axes,) if isinstance(axes, str) else axes) if a in mesh.axis_names
                  and dict(mesh.shape)[a] > 1)
    return names or None


def sparse_latent_attention(q, k, v, topk, scale):
    """q [b, s, h, c + r], k [b, t, 1, c + r], v [b, t, 1, c], topk [b, s, k] -> [b, s, h, c]."""
    from pallas_kernels.sharded import sharded_sparse_topk_attention
    from pallas_kernels.sparse_attention import sparse_topk_attention

    mesh = active_mesh()
    if mesh is None:
        return sparse_topk_attention(q, k, v, topk, scale=scale)[0]
    return sharded_sparse_topk_attention(q, k, v, topk, mesh=mesh, scale=scale)[0]


def indexer_scores(q, k, weights):
    """Fused causal index scores: q [b, s, hi, d], k [b, t, d], weights [b, s, hi] -> [b, s, t]."""
    from pallas_kernels.indexer_scores import indexer_scores as kernel
    from pallas_kernels.sharded import sharded_indexer_scores

    mesh = active_mesh()
    if mesh is None:
        return kernel(q, k, weights)
    return sharded_indexer_scores(q, k, weights, mesh=mesh)


def routed_experts(x, weights, expert_ids, wi_gate, wi_up, wo, num_experts):
    """Dropless MoE with the Pallas grouped matmul; expert-parallel under a mesh.

    x [n, d], weights/expert_ids [n, k], wi_* [E, d, f], wo [E, f, d] -> [n, d]. Under a mesh
    each device sorts its own tokens (rows over data/fsdp), multiplies them by its local experts
    (experts over ``expert``, expert width over ``tensor``) and the partial outputs are summed.
    """
    from pallas_kernels.grouped_matmul import grouped_matmul

    def local(x_l, w_l, ids_l, gate_l, up_l, wo_l, offset):
        n, k = ids_l.shape
        flat = ids_l.reshape(-1)
        order = jnp.argsort(flat, stable=True)
        rows = x_l[order // k]
        sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)

        def gmm(lhs, rhs):
            return grouped_matmul(lhs, rhs, sizes, group_offset=offset,
                                  preferred_element_type=jnp.float32).astype(lhs.dtype)

        hidden = jax.nn.silu(gmm(rows, gate_l)) * gmm(rows, up_l)
        out_rows = gmm(hidden, wo_l)
        unsorted = jnp.zeros_like(out_rows).at[order].set(out_rows).reshape(n, k, -1)
        return jnp.einsum("nkd,nk->nd", unsorted, w_l.astype(unsorted.dtype))

    mesh = active_mesh()
    if mesh is None:
        return local(x, weights, expert_ids, wi_gate, wi_up, wo, 0)
    rows = _present(mesh, BATCH_AXES)
    experts = _present(mesh, "expert")
    width = _present(mesh, "tensor")
    local_experts = num_experts // (dict(mesh.shape)["expert"] if experts else 1)
    reduce_axes = tuple((experts or ()) + (width or ()))

    def sharded(x_l, w_l, ids_l, gate_l, up_l, wo_l):
        offset = jax.lax.axis_index(experts) * local_experts if experts else 0
        out = local(x_l, w_l, ids_l, gate_l, up_l, wo_l, offset)
        return jax.lax.psum(out, reduce_axes) if reduce_axes else out

    return jax.shard_map(
        sharded, mesh=mesh,
        in_specs=(P(rows, None), P(rows, None), P(rows, None), P(experts, None, width),
                  P(experts, None, width), P(experts, width, None)),
        out_specs=P(rows, None), check_vma=False,
    )(x, weights, expert_ids, wi_gate, wi_up, wo)
