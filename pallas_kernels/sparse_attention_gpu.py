"""Top-k sparse attention kernels, GPU formulation (Triton; also runnable in interpret mode).

Why this shape: a Triton program can load a block of rows through a vector of pointers,
so each program (one query token, all heads) gathers ``block_k`` selected key/value rows
straight from global memory and loops over the blocks in-kernel with an online softmax.
Triton wants power-of-two tile sides of at least 16, so the wrapper pads heads and d_v
to powers of two and splits d_qk into power-of-two column chunks (576 = 512 + 64) whose
dot products are summed; padding is sliced off afterwards.

The backward pass writes dq and per-slot dk/dv contributions; the caller scatter-adds
the latter (sparse_attention.py), so no atomics are needed and both formulations share
one backward contract. Reference: sparse_attention.sparse_topk_attention_reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import backend as backend_lib
from pallas_kernels import poison
from pallas_kernels import sparse_attention_math as math


def _pow2_at_least(n: int, floor: int = 16) -> int:
    size = floor
    while size < n:
        size *= 2
    return size


def _column_chunks(width: int) -> tuple[tuple[int, int], ...]:
    """Splits a multiple of 16 into power-of-two (offset, size) chunks, largest first."""
    chunks, offset = [], 0
    for bit in reversed(range(width.bit_length())):
        size = 1 << bit
        if width - offset >= size >= 16:
            chunks.append((offset, size))
            offset += size
    assert offset == width, (width, chunks)
    return tuple(chunks)


def _pad_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    if x.shape[axis] == size:
        return x
    pads = [(0, 0)] * x.ndim
    pads[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pads)


def _padded(q, k, v):
    heads, d_qk, d_v = q.shape[2], q.shape[3], v.shape[2]
    heads_p = _pow2_at_least(heads)
    d_qk_p = backend_lib.round_up(d_qk, 16)
    d_v_p = _pow2_at_least(d_v)
    q = _pad_axis(_pad_axis(q, 2, heads_p), 3, d_qk_p)
    return q, _pad_axis(k, 2, d_qk_p), _pad_axis(v, 2, d_v_p), _column_chunks(d_qk_p)


def _call(kernel, args, out_shape, grid, backend, interpret, name):
    whole = pl.BlockSpec(memory_space=pl.ANY)
    kernel, args, in_specs, aliases = poison.with_poison(
        kernel, args=args, in_specs=[whole] * len(args), out_shape=out_shape)
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=in_specs,
        out_specs=jax.tree.map(lambda _: whole, out_shape),
        input_output_aliases=aliases,
        compiler_params=backend_lib.compiler_params(backend, (), interpret),
        interpret=interpret,
        name=name,
    )(*args)


def _gather(idx_ref, k_ref, v_ref, batch, token, block, *, block_k, heads_per_batch,
            num_keys, chunks):
    """One block of selected rows: (valid [1, block_k], k column chunks, v [block_k, d_v])."""
    ids = idx_ref[jax.lax.div(batch, heads_per_batch), token, pl.ds(block * block_k, block_k)]
    valid = (ids >= 0) & (ids < num_keys)
    safe = jnp.where(valid, ids, 0)
    kb = [k_ref[batch, safe, pl.ds(offset, size)] for offset, size in chunks]
    return valid[None, :], kb, v_ref[batch, safe, :]


def forward(q, k, v, idx, *, scale, block_k, heads_per_batch, backend, interpret):
    """Same contract as sparse_attention_tpu.forward."""
    batch, q_len, heads, _ = q.shape
    d_v = v.shape[2]
    qp, kp, vp, chunks = _padded(q, k, v)
    heads_p, d_v_p = qp.shape[2], vp.shape[2]
    out_shape = (jax.ShapeDtypeStruct((batch, q_len, heads_p, d_v_p), q.dtype),
                 jax.ShapeDtypeStruct((batch, q_len, heads_p, 1), jnp.float32))
    kernel = functools.partial(
        _forward_kernel, scale=scale, num_blocks=idx.shape[2] // block_k,
        gather=functools.partial(_gather, block_k=block_k, heads_per_batch=heads_per_batch,
                                 num_keys=k.shape[1], chunks=chunks),
        chunks=chunks,
    )
    out, lse = _call(kernel, [idx, qp, kp, vp], out_shape, (batch, q_len), backend, interpret,
                     "sparse_topk_attention_fwd_gpu")
    return out[:, :, :heads, :d_v], lse[:, :, :heads]


def _forward_kernel(idx_ref, q_ref, k_ref, v_ref, out_ref, lse_ref, *, scale, num_blocks,
                    gather, chunks):
    batch, token = pl.program_id(0), pl.program_id(1)
    q = [q_ref[batch, token, :, pl.ds(offset, size)] for offset, size in chunks]
    heads, d_v = out_ref.shape[2], out_ref.shape[3]

    def step(block, carry):
        valid, kb, vb = gather(idx_ref, k_ref, v_ref, batch, token, block)
        return math.online_softmax_step(math.scores(q, kb, valid, scale), vb, *carry)

    init = (jnp.full((heads, 1), -jnp.inf, jnp.float32), jnp.zeros((heads, 1), jnp.float32),
            jnp.zeros((heads, d_v), jnp.float32))
    out, lse = math.finalize(*jax.lax.fori_loop(0, num_blocks, step, init))
    out_ref[batch, token] = out.astype(out_ref.dtype)
    lse_ref[batch, token] = lse


def backward(q, k, v, idx, dout, lse, delta, *, scale, block_k, heads_per_batch, backend,
             interpret):
    """Same contract as sparse_attention_tpu.backward."""
    batch, q_len, heads, d_qk = q.shape
    d_v = v.shape[2]
    topk = idx.shape[2]
    qp, kp, vp, chunks = _padded(q, k, v)
    heads_p, d_qk_p, d_v_p = qp.shape[2], qp.shape[3], vp.shape[2]
    doutp = _pad_axis(_pad_axis(dout, 2, heads_p), 3, d_v_p)
    lsep, deltap = _pad_axis(lse, 2, heads_p), _pad_axis(delta, 2, heads_p)
    out_shape = (jax.ShapeDtypeStruct((batch, q_len, heads_p, d_qk_p), q.dtype),
                 jax.ShapeDtypeStruct((batch, q_len, topk, d_qk_p), jnp.float32),
                 jax.ShapeDtypeStruct((batch, q_len, topk, d_v_p), jnp.float32))
    kernel = functools.partial(
        _backward_kernel, scale=scale, block_k=block_k, num_blocks=topk // block_k,
        gather=functools.partial(_gather, block_k=block_k, heads_per_batch=heads_per_batch,
                                 num_keys=k.shape[1], chunks=chunks),
        chunks=chunks,
    )
    dq, dk, dv = _call(kernel, [idx, qp, kp, vp, doutp, lsep, deltap], out_shape,
                       (batch, q_len), backend, interpret, "sparse_topk_attention_bwd_gpu")
    return dq[:, :, :heads, :d_qk], dk[..., :d_qk], dv[..., :d_v]


def _backward_kernel(idx_ref, q_ref, k_ref, v_ref, dout_ref, lse_ref, delta_ref,
                     dq_ref, dk_ref, dv_ref, *, scale, block_k, num_blocks, gather, chunks):
    batch, token = pl.program_id(0), pl.program_id(1)
    q = [q_ref[batch, token, :, pl.ds(offset, size)] for offset, size in chunks]
    dout = dout_ref[batch, token]
    lse, delta = lse_ref[batch, token], delta_ref[batch, token]

    def step(block, dq_acc):
        valid, kb, vb = gather(idx_ref, k_ref, v_ref, batch, token, block)
        dq, dk, dv = math.block_grads(q, kb, vb, dout, valid, lse, delta, scale)
        slots = pl.ds(block * block_k, block_k)
        for (offset, size), dk_part in zip(chunks, dk):
            dk_ref[batch, token, slots, pl.ds(offset, size)] = dk_part
        dv_ref[batch, token, slots, :] = dv
        return [acc + part for acc, part in zip(dq_acc, dq)]

    init = [jnp.zeros((q_part.shape[0], size), jnp.float32)
            for q_part, (_, size) in zip(q, chunks)]
    dq = jax.lax.fori_loop(0, num_blocks, step, init)
    for (offset, size), dq_part in zip(chunks, dq):
        dq_ref[batch, token, :, pl.ds(offset, size)] = dq_part.astype(dq_ref.dtype)
