"""Grouped matmul kernels, GPU formulation (Triton; also runnable in interpret mode).

Why this shape: Triton programs run concurrently and cannot keep an output block
resident across programs, so nothing may be accumulated across grid steps. Instead:

  gmm:  grid (visits, n tiles). Each program owns one visit of group_metadata.py's list,
        loops over k in-kernel with the weights of its group (dynamic index into the
        full rhs), and writes only its segment's rows with a masked store -- visits that
        share a tile write disjoint rows, so they never race.
  tgmm: grid (local groups, k tiles, n tiles). Each program owns d_rhs[group] block
        outright and loops over the row tiles of its group with masked loads.

Operands are whole arrays in global memory (no BlockSpecs), indexed with ``pl.ds``.
Reference: grouped_matmul.grouped_matmul_reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

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
    grid = (visits.tile.shape[0], n_pad // block_n)
    kernel = functools.partial(
        _gmm_kernel, block_m=block_m, block_k=block_k, block_n=block_n,
        num_k_tiles=k_pad // block_k, transpose_rhs=transpose_rhs,
    )
    out_shape = jax.ShapeDtypeStruct((m_pad, n_pad), out_dtype)
    whole = pl.BlockSpec(memory_space=pl.ANY)
    kernel, args, in_specs, aliases = poison.with_poison(
        kernel, args=[*visits, lhs, rhs], in_specs=[whole] * (len(visits) + 2),
        out_shape=out_shape,
    )
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=in_specs,
        out_specs=whole,
        input_output_aliases=aliases,
        compiler_params=backend_lib.compiler_params(backend, (), interpret),
        interpret=interpret,
        name="grouped_matmul_gpu",
    )(*args)


def _gmm_kernel(
    tile_ref, group_ref, start_ref, end_ref, compute_ref, num_ref,  # int32 metadata
    lhs_ref,  # [m_pad, k_pad]
    rhs_ref,  # [groups, k_pad, n_pad] or [groups, n_pad, k_pad]
    out_ref,  # [m_pad, n_pad]
    *,
    block_m: int,
    block_k: int,
    block_n: int,
    num_k_tiles: int,
    transpose_rhs: bool,
):
    v = pl.program_id(0)
    n = pl.program_id(1)
    tile = tile_ref[v]
    group = group_ref[v]
    rows = pl.ds(tile * block_m, block_m)
    cols = pl.ds(n * block_n, block_n)

    def step(kk, acc):
        depth = pl.ds(kk * block_k, block_k)
        if transpose_rhs:
            w = rhs_ref[group, cols, depth]  # [block_n, block_k]
            dims = (((1,), (1,)), ((), ()))
        else:
            w = rhs_ref[group, depth, cols]  # [block_k, block_n]
            dims = (((1,), (0,)), ((), ()))
        return acc + jax.lax.dot_general(
            lhs_ref[rows, depth], w, dims, preferred_element_type=jnp.float32
        )

    # Visits of the zero segments (and unused trailing visits) skip the matmul.
    trips = num_k_tiles * compute_ref[v]
    acc = jax.lax.fori_loop(0, trips, step, jnp.zeros((block_m, block_n), jnp.float32))
    row_ids = tile * block_m + jax.lax.broadcasted_iota(jnp.int32, (block_m, block_n), 0)
    mine = (row_ids >= start_ref[v]) & (row_ids < end_ref[v]) & (v < num_ref[0])
    pltriton.store(out_ref.at[rows, cols], acc.astype(out_ref.dtype), mask=mine)


def tgmm(
    lhs: jax.Array,  # [m_pad, k_pad]
    dout: jax.Array,  # [m_pad, n_pad]
    group_start: jax.Array,  # int32 [num_groups] local group rows [start, end)
    group_end: jax.Array,
    *,
    num_groups: int,
    block_m: int,
    block_k: int,
    block_n: int,
    out_dtype: jnp.dtype,
    backend: str,
    interpret: bool,
) -> jax.Array:  # [num_groups, k_pad, n_pad]
    _, k_pad = lhs.shape
    n_pad = dout.shape[1]
    grid = (num_groups, k_pad // block_k, n_pad // block_n)
    kernel = functools.partial(_tgmm_kernel, block_m=block_m, block_k=block_k, block_n=block_n)
    out_shape = jax.ShapeDtypeStruct((num_groups, k_pad, n_pad), out_dtype)
    whole = pl.BlockSpec(memory_space=pl.ANY)
    kernel, args, in_specs, aliases = poison.with_poison(
        kernel, args=[group_start, group_end, lhs, dout], in_specs=[whole] * 4,
        out_shape=out_shape,
    )
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=in_specs,
        out_specs=whole,
        input_output_aliases=aliases,
        compiler_params=backend_lib.compiler_params(backend, (), interpret),
        interpret=interpret,
        name="grouped_matmul_weight_grad_gpu",
    )(*args)


def _tgmm_kernel(
    start_ref, end_ref,  # int32 [num_groups]
    lhs_ref,  # [m_pad, k_pad]
    dout_ref,  # [m_pad, n_pad]
    out_ref,  # [num_groups, k_pad, n_pad]
    *,
    block_m: int,
    block_k: int,
    block_n: int,
):
    group = pl.program_id(0)
    depth = pl.ds(pl.program_id(1) * block_k, block_k)
    cols = pl.ds(pl.program_id(2) * block_n, block_n)
    start = start_ref[group]
    end = end_ref[group]
    first_tile = start // block_m
    num_tiles = jnp.where(end > start, (end - 1) // block_m - first_tile + 1, 0)

    def step(i, acc):
        row0 = (first_tile + i) * block_m
        rows = pl.ds(row0, block_m)
        x = lhs_ref[rows, depth]  # [block_m, block_k]
        d = dout_ref[rows, cols]  # [block_m, block_n]
        keep_x = row0 + jax.lax.broadcasted_iota(jnp.int32, x.shape, 0)
        keep_d = row0 + jax.lax.broadcasted_iota(jnp.int32, d.shape, 0)
        x = jnp.where((keep_x >= start) & (keep_x < end), x, jnp.zeros_like(x))
        d = jnp.where((keep_d >= start) & (keep_d < end), d, jnp.zeros_like(d))
        return acc + jax.lax.dot_general(
            x, d, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
        )

    acc = jax.lax.fori_loop(0, num_tiles, step, jnp.zeros((block_k, block_n), jnp.float32))
    out_ref[group, depth, cols] = acc.astype(out_ref.dtype)
