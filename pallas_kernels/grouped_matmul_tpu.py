"""Grouped matmul kernels, TPU formulation (Mosaic; also what cpu interprets).

Why this shape: TPU Pallas pipelines one block per operand per grid step, so the group
of a step must be known to the index maps. The visit list (group_metadata.py) is
scalar-prefetched into SMEM and the index maps read it: step ``v`` loads the lhs tile
``visit.tile[v]`` and the weights of ``visit.group[v]``. Consecutive visits of the same
output block keep it resident in VMEM, which is how several segments can fill one tile.

Grids:
  gmm:  (n tiles, visits, k tiles)  -- out[tile] rows of the visit's segment
  tgmm: (k tiles, n tiles, visits)  -- d_rhs[group] accumulated over the group's tiles
Reference: grouped_matmul.grouped_matmul_reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import backend as backend_lib
from pallas_kernels import poison
from pallas_kernels.group_metadata import Visits


def gmm(
    lhs: jax.Array,  # [m_pad, k_pad]
    rhs: jax.Array,  # [groups, k_pad, n_pad] or [groups, n_pad, k_pad] if transpose_rhs
    visits: Visits,
    *,
    block_m: int,
    block_k: int,
    block_n: int,
    transpose_rhs: bool,
    out_dtype: jnp.dtype,
    backend: str,
    interpret: bool,
) -> jax.Array:  # [m_pad, n_pad]
    m_pad, k_pad = lhs.shape
    n_pad = rhs.shape[1] if transpose_rhs else rhs.shape[2]
    num_visits = visits.tile.shape[0]
    grid = (n_pad // block_n, num_visits, k_pad // block_k)

    # Visits that only write zeros (compute == 0) keep pointing at block (0, 0) of lhs and
    # at k block 0 of rhs, so consecutive zero visits trigger no new DMAs.
    def lhs_map(n, v, k, tile, group, start, end, compute, *_):
        busy = compute[v] == 1
        return jnp.where(busy, tile[v], 0), jnp.where(busy, k, 0)

    if transpose_rhs:
        rhs_block = (None, block_n, block_k)

        def rhs_map(n, v, k, tile, group, start, end, compute, *_):
            return group[v], n, jnp.where(compute[v] == 1, k, 0)
    else:
        rhs_block = (None, block_k, block_n)

        def rhs_map(n, v, k, tile, group, start, end, compute, *_):
            return group[v], jnp.where(compute[v] == 1, k, 0), n

    def out_map(n, v, k, tile, *_):
        return tile[v], n

    kernel = functools.partial(
        _gmm_kernel, block_m=block_m, transpose_rhs=transpose_rhs
    )
    out_shape = jax.ShapeDtypeStruct((m_pad, n_pad), out_dtype)
    kernel, args, in_specs, aliases = poison.with_poison(
        kernel,
        args=[lhs, rhs],
        in_specs=[pl.BlockSpec((block_m, block_k), lhs_map), pl.BlockSpec(rhs_block, rhs_map)],
        out_shape=out_shape,
        num_scalar_prefetch=len(visits),
    )
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=len(visits),
        grid=grid,
        in_specs=in_specs,
        out_specs=pl.BlockSpec((block_m, block_n), out_map),
        scratch_shapes=[pltpu.VMEM((block_m, block_n), jnp.float32)],
    )
    flops = 2 * m_pad * k_pad * n_pad
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid_spec=grid_spec,
        input_output_aliases=aliases,
        compiler_params=backend_lib.compiler_params(
            backend, ("parallel", "arbitrary", "arbitrary"), interpret
        ),
        interpret=interpret,
        cost_estimate=pl.CostEstimate(
            flops=flops,
            transcendentals=0,
            bytes_accessed=lhs.size * lhs.dtype.itemsize + rhs.size * rhs.dtype.itemsize
            + m_pad * n_pad * jnp.dtype(out_dtype).itemsize,
        ),
        name="grouped_matmul_tpu",
    )(*visits, *args)


def _gmm_kernel(
    tile_ref, group_ref, start_ref, end_ref, compute_ref, num_ref,  # SMEM metadata
    lhs_ref,  # [block_m, block_k]
    rhs_ref,  # [block_k, block_n] or [block_n, block_k]
    out_ref,  # [block_m, block_n]
    acc_ref,  # VMEM f32 [block_m, block_n]
    *,
    block_m: int,
    transpose_rhs: bool,
):
    del group_ref
    v = pl.program_id(1)
    k = pl.program_id(2)
    last_k = pl.num_programs(2) - 1

    @pl.when(k == 0)
    def _zero():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(compute_ref[v] == 1)
    def _multiply():
        dims = (((1,), (1,)), ((), ())) if transpose_rhs else (((1,), (0,)), ((), ()))
        acc_ref[...] += jax.lax.dot_general(
            lhs_ref[...], rhs_ref[...], dims, preferred_element_type=jnp.float32
        )

    tile = tile_ref[v]
    first_visit_of_tile = jnp.logical_or(v == 0, tile_ref[jnp.maximum(v - 1, 0)] != tile)
    store = jnp.logical_and(k == last_k, v < num_ref[0])
    rows = tile * block_m + jax.lax.broadcasted_iota(jnp.int32, acc_ref.shape, 0)
    in_segment = jnp.logical_and(rows >= start_ref[v], rows < end_ref[v])

    # Each visit writes only its segment's rows; the first visit of a tile starts from
    # zeros rather than reading the (uninitialised or poisoned) output block.
    @pl.when(jnp.logical_and(store, first_visit_of_tile))
    def _store_first():
        out_ref[...] = jnp.where(in_segment, acc_ref[...], 0.0).astype(out_ref.dtype)

    @pl.when(jnp.logical_and(store, jnp.logical_not(first_visit_of_tile)))
    def _store_more():
        merged = jnp.where(in_segment, acc_ref[...], out_ref[...].astype(jnp.float32))
        out_ref[...] = merged.astype(out_ref.dtype)


def tgmm(
    lhs: jax.Array,  # [m_pad, k_pad]
    dout: jax.Array,  # [m_pad, n_pad]
    visits: Visits,
    *,
    num_groups: int,
    block_m: int,
    block_k: int,
    block_n: int,
    out_dtype: jnp.dtype,
    backend: str,
    interpret: bool,
) -> jax.Array:  # [num_groups, k_pad, n_pad]
    m_pad, k_pad = lhs.shape
    n_pad = dout.shape[1]
    num_visits = visits.tile.shape[0]
    grid = (k_pad // block_k, n_pad // block_n, num_visits)

    def lhs_map(k, n, v, tile, *_):
        return tile[v], k

    def dout_map(k, n, v, tile, *_):
        return tile[v], n

    def out_map(k, n, v, tile, group, *_):
        return group[v], k, n

    kernel = functools.partial(_tgmm_kernel, block_m=block_m)
    out_shape = jax.ShapeDtypeStruct((num_groups, k_pad, n_pad), out_dtype)
    kernel, args, in_specs, aliases = poison.with_poison(
        kernel,
        args=[lhs, dout],
        in_specs=[pl.BlockSpec((block_m, block_k), lhs_map),
                  pl.BlockSpec((block_m, block_n), dout_map)],
        out_shape=out_shape,
        num_scalar_prefetch=len(visits),
    )
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=len(visits),
        grid=grid,
        in_specs=in_specs,
        out_specs=pl.BlockSpec((None, block_k, block_n), out_map),
        scratch_shapes=[pltpu.VMEM((block_k, block_n), jnp.float32)],
    )
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid_spec=grid_spec,
        input_output_aliases=aliases,
        compiler_params=backend_lib.compiler_params(
            backend, ("parallel", "parallel", "arbitrary"), interpret
        ),
        interpret=interpret,
        cost_estimate=pl.CostEstimate(
            flops=2 * m_pad * k_pad * n_pad,
            transcendentals=0,
            bytes_accessed=lhs.size * lhs.dtype.itemsize + dout.size * dout.dtype.itemsize
            + num_groups * k_pad * n_pad * jnp.dtype(out_dtype).itemsize,
        ),
        name="grouped_matmul_weight_grad_tpu",
    )(*visits, *args)


def _tgmm_kernel(
    tile_ref, group_ref, start_ref, end_ref, compute_ref, num_ref,  # SMEM metadata
    lhs_ref,  # [block_m, block_k]
    dout_ref,  # [block_m, block_n]
    out_ref,  # [block_k, block_n]
    acc_ref,  # VMEM f32 [block_k, block_n]
    *,
    block_m: int,
):
    v = pl.program_id(2)
    last_v = pl.num_programs(2) - 1
    group = group_ref[v]
    real = v < num_ref[0]
    first_of_group = jnp.logical_or(v == 0, group_ref[jnp.maximum(v - 1, 0)] != group)
    last_of_group = jnp.logical_or(
        v == num_ref[0] - 1, group_ref[jnp.minimum(v + 1, last_v)] != group
    )

    @pl.when(jnp.logical_and(real, first_of_group))
    def _zero():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(jnp.logical_and(real, compute_ref[v] == 1))
    def _accumulate():
        tile = tile_ref[v]

        def masked(ref):
            rows = tile * block_m + jax.lax.broadcasted_iota(jnp.int32, ref.shape, 0)
            keep = jnp.logical_and(rows >= start_ref[v], rows < end_ref[v])
            # Select in f32 (older TPUs have no bf16 VPU), multiply in the input dtype.
            return jnp.where(keep, ref[...].astype(jnp.float32), 0.0).astype(ref.dtype)

        acc_ref[...] += jax.lax.dot_general(
            masked(lhs_ref), masked(dout_ref), (((0,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )

    @pl.when(jnp.logical_and(real, last_of_group))
    def _store():
        out_ref[...] = acc_ref[...].astype(out_ref.dtype)
