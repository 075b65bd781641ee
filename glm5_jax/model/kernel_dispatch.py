"""Calls into ``pallas_kernels`` from model code: directly on one device, under ``shard_map``
when a multi-device mesh is active (``sharding.activate``), so each device runs its own shard.

A pallas_call is opaque to the SPMD partitioner; without the explicit partitioning XLA would
gather every operand onto every device first. Kernels are imported lazily so the default
(``xla``) paths never import Pallas.
"""

from __future__ import annotations

import jax

from glm5_jax.sharding import BATCH_MESH_AXES


def active_mesh():
    """The mesh set by ``sharding.activate`` if it spans more than one device, else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    return mesh


def sparse_latent_attention(q, k, v, topk, scale):
    """q [b, s, h, c + r], k [b, t, 1, c + r], v [b, t, 1, c], topk [b, s, k] -> [b, s, h, c]."""
    from pallas_kernels.sharded import sharded_sparse_topk_attention
    from pallas_kernels.sparse_attention import sparse_topk_attention

    mesh = active_mesh()
    if mesh is None:
        return sparse_topk_attention(q, k, v, topk, scale=scale)[0]
    return sharded_sparse_topk_attention(q, k, v, topk, mesh=mesh, scale=scale,
                                         batch_axes=BATCH_MESH_AXES)[0]


def indexer_scores(q, k, weights):
    """Fused causal index scores: q [b, s, hi, d], k [b, t, d], weights [b, s, hi] -> [b, s, t]."""
    from pallas_kernels.indexer_scores import indexer_scores as kernel
    from pallas_kernels.sharded import sharded_indexer_scores

    mesh = active_mesh()
    if mesh is None:
        return kernel(q, k, weights)
    return sharded_indexer_scores(q, k, weights, mesh=mesh, batch_axes=BATCH_MESH_AXES)
