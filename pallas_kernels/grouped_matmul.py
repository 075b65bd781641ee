"""Grouped matmul for dropless MoE: ``out[rows of group g] = lhs[rows] @ rhs[g]``.

Why: after routing, the (token, expert) pairs are sorted by expert so each expert's
tokens are a contiguous run of rows; one ragged matmul then replaces a loop over experts
and never pads groups to a capacity. Semantics follow ``jax.lax.ragged_dot``: rows past
``sum(group_sizes)`` are zero. With ``group_offset`` (expert parallelism) ``rhs`` holds
only groups ``[group_offset, group_offset + rhs.shape[0])`` and rows of all other groups
are zero, so the per-shard outputs can be summed (``psum`` over the expert axis).

Kernels: grouped_matmul_tpu.py (Mosaic; the one cpu interprets) and
grouped_matmul_gpu.py (Triton). The reference is ``grouped_matmul_reference`` below.
Gradients (custom VJP):
  d_lhs = grouped matmul of d_out with rhs transposed    (same kernel, transpose_rhs)
  d_rhs[g] = lhs[rows g]^T @ d_out[rows g]                (the "tgmm" kernel)
both accumulate in f32; d_out is cast to the inputs' dtype first, as the MXU/tensor
cores want matching operand types.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import backend as backend_lib
from pallas_kernels import (
    block_sizes,
    group_metadata,
    grouped_matmul_gpu,
    grouped_matmul_tpu,
)


@dataclasses.dataclass(frozen=True)
class _Config:
    block_m: int
    block_k: int
    block_n: int
    backend: str
    interpret: bool
    out_dtype: jnp.dtype


def grouped_matmul(
    lhs: jax.Array,  # [m, k] rows sorted by group
    rhs: jax.Array,  # [num_groups_local, k, n]
    group_sizes: jax.Array,  # int32 [num_groups_total]
    *,
    group_offset: int | jax.Array = 0,
    block_m: int | None = None,
    block_k: int | None = None,
    block_n: int | None = None,
    interpret: bool | None = None,
    preferred_element_type: jnp.dtype = jnp.float32,
    backend: str | None = None,
) -> jax.Array:  # [m, n] in preferred_element_type
    """Ragged ``lhs @ rhs[group]`` with f32 accumulation; differentiable in lhs and rhs.

    ``group_sizes`` must cover at least ``group_offset + rhs.shape[0]`` groups; block
    sizes default per backend (block_sizes.py) and shrink for small inputs.
    """
    if lhs.ndim != 2 or rhs.ndim != 3 or lhs.shape[1] != rhs.shape[1]:
        raise ValueError(f"expected lhs [m, k] and rhs [g, k, n], got {lhs.shape}, {rhs.shape}")
    if group_sizes.ndim != 1 or group_sizes.shape[0] < rhs.shape[0]:
        raise ValueError(f"group_sizes {group_sizes.shape} shorter than rhs groups {rhs.shape[0]}")
    name = backend_lib.resolve_backend(backend)
    defaults = block_sizes.grouped_matmul_blocks(name)
    config = _Config(
        block_m=block_m or defaults.block_m,
        block_k=block_k or defaults.block_k,
        block_n=block_n or defaults.block_n,
        backend=name,
        interpret=backend_lib.resolve_interpret(interpret, name),
        out_dtype=jnp.dtype(preferred_element_type),
    )
    compute_dtype = jnp.result_type(lhs.dtype, rhs.dtype)
    return _grouped_matmul(
        lhs.astype(compute_dtype), rhs.astype(compute_dtype),
        group_sizes.astype(jnp.int32), jnp.asarray(group_offset, jnp.int32), config,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _grouped_matmul(lhs, rhs, group_sizes, group_offset, config):
    return _forward(lhs, rhs, group_sizes, group_offset, config,
                    transpose_rhs=False, out_dtype=config.out_dtype)


def _grouped_matmul_fwd(lhs, rhs, group_sizes, group_offset, config):
    out = _grouped_matmul(lhs, rhs, group_sizes, group_offset, config)
    return out, (lhs, rhs, group_sizes, group_offset)


def _grouped_matmul_bwd(config, residuals, dout):
    lhs, rhs, group_sizes, group_offset = residuals
    dout = dout.astype(lhs.dtype)
    # d_lhs contracts over n: swap the k/n blocks so each block keeps its alignment.
    swapped = dataclasses.replace(config, block_k=config.block_n, block_n=config.block_k)
    dlhs = _forward(dout, rhs, group_sizes, group_offset, swapped,
                    transpose_rhs=True, out_dtype=lhs.dtype)
    drhs = _weight_grad(lhs, dout, group_sizes, group_offset, config, num_groups=rhs.shape[0],
                        out_dtype=rhs.dtype)
    return dlhs, drhs, None, None


_grouped_matmul.defvjp(_grouped_matmul_fwd, _grouped_matmul_bwd)


def _blocks(config: _Config, m: int, k: int, n: int, itemsize: int) -> tuple[int, int, int]:
    fit = functools.partial(backend_lib.fit_block, backend=config.backend, itemsize=itemsize)
    return (fit(m, config.block_m, minor=False), fit(k, config.block_k, minor=True),
            fit(n, config.block_n, minor=True))


def _pad_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    if x.shape == shape:
        return x
    return jnp.pad(x, [(0, t - s) for s, t in zip(x.shape, shape)])


def _forward(lhs, rhs, group_sizes, group_offset, config, *, transpose_rhs, out_dtype):
    """lhs [m, k] @ rhs[g] ([g, k, n], or [g, n, k] when transpose_rhs) -> [m, n]."""
    m, k = lhs.shape
    num_groups = rhs.shape[0]
    n = rhs.shape[1] if transpose_rhs else rhs.shape[2]
    if m == 0:
        return jnp.zeros((0, n), out_dtype)
    bm, bk, bn = _blocks(config, m, k, n, lhs.dtype.itemsize)
    m_pad, k_pad, n_pad = (backend_lib.round_up(m, bm), backend_lib.round_up(k, bk),
                           backend_lib.round_up(n, bn))
    lhs_p = _pad_to(lhs, (m_pad, k_pad))
    rhs_p = _pad_to(rhs, (num_groups, n_pad, k_pad) if transpose_rhs else (num_groups, k_pad, n_pad))
    visits = group_metadata.forward_visits(
        group_sizes, group_offset, num_local=num_groups, num_rows=m,
        block_m=bm, num_tiles=m_pad // bm,
    )
    kernels = grouped_matmul_gpu if backend_lib.formulation(config.backend) == "gpu" else grouped_matmul_tpu
    out = kernels.gmm(
        lhs_p, rhs_p, visits, block_m=bm, block_k=bk, block_n=bn, transpose_rhs=transpose_rhs,
        out_dtype=out_dtype, backend=config.backend, interpret=config.interpret,
    )
    return out[:m, :n]


def _weight_grad(lhs, dout, group_sizes, group_offset, config, *, num_groups, out_dtype):
    """d_rhs[g] = lhs[rows g]^T @ dout[rows g] -> [num_groups, k, n]."""
    m, k = lhs.shape
    n = dout.shape[1]
    if m == 0:
        return jnp.zeros((num_groups, k, n), out_dtype)
    bm, bk, bn = _blocks(config, m, k, n, lhs.dtype.itemsize)
    m_pad, k_pad, n_pad = (backend_lib.round_up(m, bm), backend_lib.round_up(k, bk),
                           backend_lib.round_up(n, bn))
    lhs_p = _pad_to(lhs, (m_pad, k_pad))
    dout_p = _pad_to(dout, (m_pad, n_pad))
    common = {"num_groups": num_groups, "block_m": bm, "block_k": bk, "block_n": bn,
                  "out_dtype": out_dtype, "backend": config.backend, "interpret": config.interpret}
    if backend_lib.formulation(config.backend) == "gpu":
        start, end = group_metadata.local_group_bounds(group_sizes, group_offset, num_groups, m)
        out = grouped_matmul_gpu.tgmm(lhs_p, dout_p, start, end, **common)
    else:
        visits = group_metadata.weight_grad_visits(
            group_sizes, group_offset, num_local=num_groups, num_rows=m,
            block_m=bm, num_tiles=m_pad // bm,
        )
        out = grouped_matmul_tpu.tgmm(lhs_p, dout_p, visits, **common)
    return out[:, :k, :n]


def grouped_matmul_reference(
    lhs: jax.Array,  # [m, k]
    rhs: jax.Array,  # [num_groups_local, k, n]
    group_sizes: jax.Array,  # int32 [num_groups_total]
    *,
    group_offset: int | jax.Array = 0,
    preferred_element_type: jnp.dtype = jnp.float32,
) -> jax.Array:  # [m, n]
    """Pure-jnp reference (and the ``xla`` path): ``jax.lax.ragged_dot``.

    ragged_dot has no usable group offset on every backend, so the rows are rolled up by
    the number of rows before the local groups, multiplied with the local sizes (rows past
    their sum come out zero, including the rolled-around leading rows), and rolled back.
    Only lhs and the output move, so an expert-sharded rhs is never reshaped.
    """
    num_local = rhs.shape[0]
    sizes = group_sizes.astype(jnp.int32)
    offset = jnp.asarray(group_offset, jnp.int32)
    rows_before = jnp.sum(jnp.where(jnp.arange(sizes.shape[0]) < offset, sizes, 0))
    local_sizes = jax.lax.dynamic_slice_in_dim(sizes, offset, num_local)
    compute_dtype = jnp.result_type(lhs.dtype, rhs.dtype)
    out = jax.lax.ragged_dot(
        jnp.roll(lhs.astype(compute_dtype), -rows_before, axis=0), rhs.astype(compute_dtype),
        local_sizes, preferred_element_type=preferred_element_type,
    )
    return jnp.roll(out, rows_before, axis=0)
