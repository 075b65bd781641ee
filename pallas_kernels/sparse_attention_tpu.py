"""Top-k sparse attention kernels, TPU formulation (Mosaic; also what cpu interprets).

Why this shape: the selected keys are scattered over the whole sequence, so no
BlockSpec can describe them. Keys and values stay in HBM (``pl.ANY``); the query's
``topk`` indices are blocked into SMEM, and each grid step gathers ``block_k`` rows by
one small DMA per row into a double-buffered VMEM scratch while the previous block is
being scored (the next block's copies are started before this block's are waited on).

Grid (batch', q_len, topk / block_k): one query token per (b, t) with all its heads,
so every gathered latent row is reused by all heads (the MQA form of MLA that DSA uses).
The last axis walks the selected keys with an online softmax (forward) or accumulates
dq and emits per-slot dk/dv contributions (backward); cost is O(q_len * topk).
Reference: sparse_attention.sparse_topk_attention_reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import backend as backend_lib
from pallas_kernels import poison
from pallas_kernels import sparse_attention_math as math


def _gather(idx_smem, k_hbm, v_hbm, kbuf, vbuf, sems, *, batch, block, slot, block_k,
            num_keys, start: bool):
    """Starts (or waits for) the row DMAs of one block of selected keys into ``slot``."""

    def row(j, carry):
        position = idx_smem[0, block * block_k + j]
        position = jnp.where((position >= 0) & (position < num_keys), position, 0)
        copies = (
            pltpu.make_async_copy(k_hbm.at[batch, pl.ds(position, 1)],
                                  kbuf.at[slot, pl.ds(j, 1)], sems.at[0, slot]),
            pltpu.make_async_copy(v_hbm.at[batch, pl.ds(position, 1)],
                                  vbuf.at[slot, pl.ds(j, 1)], sems.at[1, slot]),
        )
        for copy in copies:
            copy.start() if start else copy.wait()
        return carry

    jax.lax.fori_loop(0, block_k, row, 0)


def _rows(buffer, slot):
    """[block_k, d] from a [2, block_k, 1, d] gather buffer (one row per tile)."""
    rows = buffer[slot]
    return rows.reshape(rows.shape[0], rows.shape[2])


def _prefetch_and_wait(gather):
    """Double buffering across grid steps: block j+1's copies fly while j is computed."""
    block = pl.program_id(2)
    slot = jax.lax.rem(block, 2)

    @pl.when(block == 0)
    def _first():
        gather(block=0, slot=0, start=True)

    @pl.when(block + 1 < pl.num_programs(2))
    def _next():
        gather(block=block + 1, slot=1 - slot, start=True)

    gather(block=block, slot=slot, start=False)
    return slot


def _specs(q_shape, topk, block_k, heads_per_batch):
    """BlockSpecs for the index (SMEM and VMEM copies), the query and HBM keys/values."""
    _, _, heads, d_qk = q_shape
    r = heads_per_batch
    # lax.div, not //: floor division lowers through sign(), which Mosaic can only lower
    # after querying the chip; truncation is the same for these non-negative indices.
    return [
        pl.BlockSpec((None, None, 1, topk), lambda b, t, j: (jax.lax.div(b, r), t, 0, 0),
                     memory_space=pltpu.SMEM),
        pl.BlockSpec((None, None, 1, block_k), lambda b, t, j: (jax.lax.div(b, r), t, 0, j)),
        pl.BlockSpec((None, None, heads, d_qk), lambda b, t, j: (b, t, 0, 0)),
        pl.BlockSpec(memory_space=pl.ANY),
        pl.BlockSpec(memory_space=pl.ANY),
    ]


def forward(
    q: jax.Array,  # [batch', q_len, heads, d_qk]
    k: jax.Array,  # [batch', kv_len, d_qk]
    v: jax.Array,  # [batch', kv_len, d_v]
    idx: jax.Array,  # int32 [batch, q_len, topk], topk % block_k == 0, -1 = invalid
    # (passed twice as [batch, q_len, 1, topk]: whole into SMEM for the DMA addresses,
    #  block by block into VMEM for the validity mask; both keep (1, lanes) full-dim tiles)
    *,
    scale: float,
    block_k: int,
    heads_per_batch: int,
    backend: str,
    interpret: bool,
) -> tuple[jax.Array, jax.Array]:  # out [batch', q_len, heads, d_v], lse [..., heads, 1]
    batch, q_len, heads, d_qk = q.shape
    kv_len, d_v = v.shape[1], v.shape[2]
    topk = idx.shape[2]
    out_shape = (jax.ShapeDtypeStruct((batch, q_len, heads, d_v), q.dtype),
                 jax.ShapeDtypeStruct((batch, q_len, heads, 1), jnp.float32))
    kernel = functools.partial(_forward_kernel, block_k=block_k, scale=scale, num_keys=kv_len)
    kernel, args, in_specs, aliases = poison.with_poison(
        kernel, args=[idx[:, :, None, :], idx[:, :, None, :], q, k[:, :, None], v[:, :, None]],
        in_specs=_specs(q.shape, topk, block_k, heads_per_batch), out_shape=out_shape,
    )
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(batch, q_len, topk // block_k),
        in_specs=in_specs,
        out_specs=(pl.BlockSpec((None, None, heads, d_v), lambda b, t, j: (b, t, 0, 0)),
                   pl.BlockSpec((None, None, heads, 1), lambda b, t, j: (b, t, 0, 0))),
        scratch_shapes=[
            pltpu.VMEM((2, block_k, 1, d_qk), k.dtype),
            pltpu.VMEM((2, block_k, 1, d_v), v.dtype),
            pltpu.SemaphoreType.DMA((2, 2)),
            pltpu.VMEM((heads, 1), jnp.float32),
            pltpu.VMEM((heads, 1), jnp.float32),
            pltpu.VMEM((heads, d_v), jnp.float32),
        ],
        input_output_aliases=aliases,
        compiler_params=backend_lib.compiler_params(
            backend, ("parallel", "parallel", "arbitrary"), interpret),
        interpret=interpret,
        cost_estimate=pl.CostEstimate(
            flops=2 * batch * q_len * heads * topk * (d_qk + d_v),
            transcendentals=batch * q_len * heads * topk,
            bytes_accessed=batch * q_len * topk * (d_qk + d_v) * k.dtype.itemsize,
        ),
        name="sparse_topk_attention_fwd_tpu",
    )(*args)


def _forward_kernel(
    idx_smem,  # SMEM int32 [1, topk]
    idx_row,  # int32 [1, block_k]
    q_ref,  # [heads, d_qk]
    k_hbm, v_hbm,  # HBM [batch', kv_len, d]
    out_ref,  # [heads, d_v]
    lse_ref,  # f32 [heads, 1]
    kbuf, vbuf,  # VMEM [2, block_k, d]
    sems,  # DMA semaphores [2, 2]
    m_ref, l_ref, acc_ref,  # VMEM f32 running statistics
    *,
    block_k: int,
    scale: float,
    num_keys: int,
):
    block = pl.program_id(2)
    gather = functools.partial(_gather, idx_smem, k_hbm, v_hbm, kbuf, vbuf, sems,
                               batch=pl.program_id(0), block_k=block_k, num_keys=num_keys)

    @pl.when(block == 0)
    def _init():
        m_ref[...] = jnp.full_like(m_ref, -jnp.inf)
        l_ref[...] = jnp.zeros_like(l_ref)
        acc_ref[...] = jnp.zeros_like(acc_ref)

    slot = _prefetch_and_wait(gather)
    ids = idx_row[...]
    valid = (ids >= 0) & (ids < num_keys)
    s = math.scores(q_ref[...], _rows(kbuf, slot), valid, scale)
    m, l, acc = math.online_softmax_step(s, _rows(vbuf, slot), m_ref[...], l_ref[...], acc_ref[...])
    m_ref[...], l_ref[...], acc_ref[...] = m, l, acc

    @pl.when(block == pl.num_programs(2) - 1)
    def _finish():
        out, lse = math.finalize(m, l, acc)
        out_ref[...] = out.astype(out_ref.dtype)
        lse_ref[...] = lse


def backward(
    q: jax.Array,  # [batch', q_len, heads, d_qk]
    k: jax.Array,  # [batch', kv_len, d_qk]
    v: jax.Array,  # [batch', kv_len, d_v]
    idx: jax.Array,  # int32 [batch, q_len, topk]
    dout: jax.Array,  # [batch', q_len, heads, d_v]
    lse: jax.Array,  # f32 [batch', q_len, heads, 1]
    delta: jax.Array,  # f32 [batch', q_len, heads, 1]
    *,
    scale: float,
    block_k: int,
    heads_per_batch: int,
    backend: str,
    interpret: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(dq [batch', q_len, heads, d_qk] in q.dtype, dk_slots [batch', q_len, topk, d_qk]
    f32, dv_slots [batch', q_len, topk, d_v] f32)."""
    batch, q_len, heads, d_qk = q.shape
    kv_len, d_v = v.shape[1], v.shape[2]
    topk = idx.shape[2]
    out_shape = (jax.ShapeDtypeStruct((batch, q_len, heads, d_qk), q.dtype),
                 jax.ShapeDtypeStruct((batch, q_len, topk, d_qk), jnp.float32),
                 jax.ShapeDtypeStruct((batch, q_len, topk, d_v), jnp.float32))
    token = lambda shape: pl.BlockSpec((None, None, *shape), lambda b, t, j: (b, t, 0, 0))
    slots = lambda d: pl.BlockSpec((None, None, block_k, d), lambda b, t, j: (b, t, j, 0))
    kernel = functools.partial(_backward_kernel, block_k=block_k, scale=scale, num_keys=kv_len)
    kernel, args, in_specs, aliases = poison.with_poison(
        kernel, args=[idx[:, :, None, :], idx[:, :, None, :], q, k[:, :, None], v[:, :, None],
              dout, lse, delta],
        in_specs=_specs(q.shape, topk, block_k, heads_per_batch)
        + [token((heads, d_v)), token((heads, 1)), token((heads, 1))],
        out_shape=out_shape,
    )
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(batch, q_len, topk // block_k),
        in_specs=in_specs,
        out_specs=(token((heads, d_qk)), slots(d_qk), slots(d_v)),
        scratch_shapes=[
            pltpu.VMEM((2, block_k, 1, d_qk), k.dtype),
            pltpu.VMEM((2, block_k, 1, d_v), v.dtype),
            pltpu.SemaphoreType.DMA((2, 2)),
            pltpu.VMEM((heads, d_qk), jnp.float32),
        ],
        input_output_aliases=aliases,
        compiler_params=backend_lib.compiler_params(
            backend, ("parallel", "parallel", "arbitrary"), interpret),
        interpret=interpret,
        cost_estimate=pl.CostEstimate(
            flops=4 * batch * q_len * heads * topk * (d_qk + d_v),
            transcendentals=batch * q_len * heads * topk,
            bytes_accessed=batch * q_len * topk * (d_qk + d_v) * (k.dtype.itemsize + 4),
        ),
        name="sparse_topk_attention_bwd_tpu",
    )(*args)


def _backward_kernel(
    idx_smem, idx_row, q_ref, k_hbm, v_hbm,
    dout_ref,  # [heads, d_v]
    lse_ref, delta_ref,  # f32 [heads, 1]
    dq_ref,  # [heads, d_qk]
    dk_ref,  # f32 [block_k, d_qk] per-slot contributions
    dv_ref,  # f32 [block_k, d_v]
    kbuf, vbuf, sems,
    dq_acc,  # VMEM f32 [heads, d_qk]
    *,
    block_k: int,
    scale: float,
    num_keys: int,
):
    block = pl.program_id(2)
    gather = functools.partial(_gather, idx_smem, k_hbm, v_hbm, kbuf, vbuf, sems,
                               batch=pl.program_id(0), block_k=block_k, num_keys=num_keys)

    @pl.when(block == 0)
    def _init():
        dq_acc[...] = jnp.zeros_like(dq_acc)

    slot = _prefetch_and_wait(gather)
    ids = idx_row[...]
    valid = (ids >= 0) & (ids < num_keys)
    dq, dk, dv = math.block_grads(
        q_ref[...], _rows(kbuf, slot), _rows(vbuf, slot), dout_ref[...], valid, lse_ref[...],
        delta_ref[...], scale,
    )
    dq_acc[...] += dq
    dk_ref[...] = dk
    dv_ref[...] = dv

    @pl.when(block == pl.num_programs(2) - 1)
    def _finish():
        dq_ref[...] = dq_acc[...].astype(dq_ref.dtype)
