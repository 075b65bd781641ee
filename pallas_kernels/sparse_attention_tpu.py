"""Top-k sparse attention kernels, TPU formulation (Mosaic; also what cpu interprets).

Why this shape: the selected keys are scattered over the whole sequence, so no
BlockSpec can describe them. Keys and values stay in HBM (``pl.ANY``) and each grid step
gathers its rows by DMA into a double-buffered VMEM scratch while the previous block is
being scored (block j+1's copies are started before block j's are waited on).

Grid (batch', q_len / block_q, topk / block_k): ``block_q`` query tokens per step, each
with all its heads, so a gathered latent row is reused by every head (the MQA form of MLA
that DSA uses) and the per-step overhead is shared by several queries. The last axis walks
the selected keys with an online softmax (forward) or accumulates dq and emits per-slot
dk/dv contributions (backward); cost is O(q_len * topk).

Gathers: the caller sorts each query's indices (``sparse_attention`` does), so the runs of
consecutive positions that DSA's selections are full of (a recent window, whole spans)
sit in consecutive slots. Slots go ``run`` at a time: a run whose positions are
consecutive is one DMA of ``run`` rows, any other run is ``run`` one-row DMAs. Every
started copy lands in the same slot buffer and signals its semaphore by its bytes, so one
wait sized like the whole buffer retires them all (one wait per buffer, not per row).
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

DMA_RUN = 8  # slots per coalescing check: one DMA when their positions are consecutive


def _run_length(block_k: int, num_keys: int) -> int:
    """Slots per coalescing check: divides block_k, no longer than the key rows."""
    run = max(1, min(DMA_RUN, block_k, num_keys))
    while block_k % run:
        run -= 1
    return run


def _gather(idx_smem, k_hbm, v_hbm, kbuf, vbuf, sems, *, batch, slot, block_q, block_k,
            num_keys):
    """Starts the DMAs of one block (``block_q`` queries x ``block_k`` slots, indices in
    ``idx_smem`` [block_q, block_k]) into buffer ``slot``."""
    run = _run_length(block_k, num_keys)
    runs_per_query = block_k // run

    def copy(position, row, rows):
        for hbm, buf, which in ((k_hbm, kbuf, 0), (v_hbm, vbuf, 1)):
            pltpu.make_async_copy(hbm.at[batch, pl.ds(position, rows)],
                                  buf.at[slot, pl.ds(row, rows)], sems.at[which, slot]).start()

    def one_run(r, carry):
        query = jax.lax.div(r, runs_per_query)
        first_slot = jax.lax.rem(r, runs_per_query) * run
        first = idx_smem[query, first_slot]
        row = query * block_k + first_slot
        # Every step +1 (sorted indices may repeat a position, so first and last alone
        # do not prove a run), starting at a valid key and ending before the last one.
        consecutive = (first >= 0) & (first + (run - 1) < num_keys)
        for j in range(1, run):
            consecutive &= idx_smem[query, first_slot + j] == first + j

        @pl.when(consecutive)
        def _one_dma():
            copy(first, row, run)

        @pl.when(jnp.logical_not(consecutive))
        def _row_dmas():
            def one_row(j, carry):
                position = idx_smem[query, first_slot + j]
                position = jnp.where((position >= 0) & (position < num_keys), position, 0)
                copy(position, row + j, 1)
                return carry

            jax.lax.fori_loop(0, run, one_row, 0)

        return carry

    jax.lax.fori_loop(0, block_q * runs_per_query, one_run, 0)


def _wait(kbuf, vbuf, sems, slot):
    """One wait per buffer: a descriptor the size of the slot retires every copy into it."""
    for buf, which in ((kbuf, 0), (vbuf, 1)):
        pltpu.make_async_copy(buf.at[slot], buf.at[slot], sems.at[which, slot]).wait()


def _rows(buffer, slot, query, block_k):
    """[block_k, d] of ``query`` from a [2, block_q * block_k, 1, d] buffer (a row per tile)."""
    rows = buffer[slot, pl.ds(query * block_k, block_k)]
    return rows.reshape(rows.shape[0], rows.shape[2])


def _prefetch_and_wait(gather, idx_now, idx_next, kbuf, vbuf, sems):
    """Double buffering across grid steps: block j+1's copies fly while j is computed."""
    block = pl.program_id(2)
    slot = jax.lax.rem(block, 2)

    @pl.when(block == 0)
    def _first():
        gather(idx_now, slot=0)

    @pl.when(block + 1 < pl.num_programs(2))
    def _next():
        gather(idx_next, slot=1 - slot)

    _wait(kbuf, vbuf, sems, slot)
    return slot


def _specs(q_shape, topk, block_q, block_k, heads_per_batch):
    """BlockSpecs: the indices of this block and of the next (SMEM, DMA addresses), this
    block's indices again in VMEM (validity mask), the queries, and HBM keys/values.

    Indices arrive as [batch, q_blocks, block_q, topk] and queries as
    [batch', q_blocks, block_q, heads, d_qk], so every block's last two dims are full or
    lane-tiled."""
    _, _, _, heads, d_qk = q_shape
    r = heads_per_batch
    last = topk // block_k - 1
    # lax.div, not //: floor division lowers through sign(), which Mosaic can only lower
    # after querying the chip; truncation is the same for these non-negative indices.
    return [
        pl.BlockSpec((None, None, block_q, block_k), lambda b, t, j: (jax.lax.div(b, r), t, 0, j),
                     memory_space=pltpu.SMEM),
        pl.BlockSpec((None, None, block_q, block_k),
                     lambda b, t, j: (jax.lax.div(b, r), t, 0, jnp.minimum(j + 1, last)),
                     memory_space=pltpu.SMEM),
        pl.BlockSpec((None, None, block_q, block_k), lambda b, t, j: (jax.lax.div(b, r), t, 0, j)),
        pl.BlockSpec((None, None, block_q, heads, d_qk), lambda b, t, j: (b, t, 0, 0, 0)),
        pl.BlockSpec(memory_space=pl.ANY),
        pl.BlockSpec(memory_space=pl.ANY),
    ]


def _by_query_blocks(block_q: int, *arrays):
    """[b, q_len, ...] -> [b, q_len / block_q, block_q, ...], padding q_len (indices with -1)."""
    out = []
    for x in arrays:
        q_len = x.shape[1]
        pad = backend_lib.round_up(q_len, block_q) - q_len
        fill = -1 if jnp.issubdtype(x.dtype, jnp.integer) else 0
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        out.append(x.reshape(x.shape[0], -1, block_q, *x.shape[2:]))
    return out


def _from_query_blocks(q_len: int, *arrays):
    return [x.reshape(x.shape[0], -1, *x.shape[3:])[:, :q_len] for x in arrays]


def _buffers(block_q, block_k, d_qk, d_v, dtype):
    rows = block_q * block_k
    return [pltpu.VMEM((2, rows, 1, d_qk), dtype), pltpu.VMEM((2, rows, 1, d_v), dtype),
            pltpu.SemaphoreType.DMA((2, 2))]


def forward(
    q: jax.Array,  # [batch', q_len, heads, d_qk]
    k: jax.Array,  # [batch', kv_len, d_qk]
    v: jax.Array,  # [batch', kv_len, d_v]
    idx: jax.Array,  # int32 [batch, q_len, topk], topk % block_k == 0, -1 = invalid, sorted
    *,
    scale: float,
    block_q: int,
    block_k: int,
    heads_per_batch: int,
    backend: str,
    interpret: bool,
) -> tuple[jax.Array, jax.Array]:  # out [batch', q_len, heads, d_v], lse [..., heads, 1]
    batch, q_len, heads, d_qk = q.shape
    kv_len, d_v = v.shape[1], v.shape[2]
    topk = idx.shape[2]
    qb, idxb = _by_query_blocks(block_q, q, idx)
    q_blocks = qb.shape[1]
    out_shape = (jax.ShapeDtypeStruct((batch, q_blocks, block_q, heads, d_v), q.dtype),
                 jax.ShapeDtypeStruct((batch, q_blocks, block_q, heads, 1), jnp.float32))
    kernel = functools.partial(_forward_kernel, block_q=block_q, block_k=block_k, scale=scale,
                               num_keys=kv_len)
    kernel, args, in_specs, aliases = poison.with_poison(
        kernel, args=[idxb, idxb, idxb, qb, k[:, :, None], v[:, :, None]],
        in_specs=_specs(qb.shape, topk, block_q, block_k, heads_per_batch), out_shape=out_shape,
    )
    token = lambda d: pl.BlockSpec((None, None, block_q, heads, d), lambda b, t, j: (b, t, 0, 0, 0))
    out, lse = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(batch, q_blocks, topk // block_k),
        in_specs=in_specs,
        out_specs=(token(d_v), token(1)),
        scratch_shapes=_buffers(block_q, block_k, d_qk, d_v, k.dtype) + [
            pltpu.VMEM((block_q, heads, 1), jnp.float32),
            pltpu.VMEM((block_q, heads, 1), jnp.float32),
            pltpu.VMEM((block_q, heads, d_v), jnp.float32),
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
    return tuple(_from_query_blocks(q_len, out, lse))


def _forward_kernel(
    idx_now, idx_next,  # SMEM int32 [block_q, block_k]: this block's and the next's indices
    idx_vmem,  # int32 [block_q, block_k]
    q_ref,  # [block_q, heads, d_qk]
    k_hbm, v_hbm,  # HBM [batch', kv_len, 1, d]
    out_ref,  # [block_q, heads, d_v]
    lse_ref,  # f32 [block_q, heads, 1]
    kbuf, vbuf,  # VMEM [2, block_q * block_k, 1, d]
    sems,  # DMA semaphores [2, 2]
    m_ref, l_ref, acc_ref,  # VMEM f32 running statistics per query
    *,
    block_q: int,
    block_k: int,
    scale: float,
    num_keys: int,
):
    block = pl.program_id(2)
    gather = functools.partial(_gather, k_hbm=k_hbm, v_hbm=v_hbm, kbuf=kbuf, vbuf=vbuf,
                               sems=sems, batch=pl.program_id(0), block_q=block_q,
                               block_k=block_k, num_keys=num_keys)

    @pl.when(block == 0)
    def _init():
        m_ref[...] = jnp.full_like(m_ref, -jnp.inf)
        l_ref[...] = jnp.zeros_like(l_ref)
        acc_ref[...] = jnp.zeros_like(acc_ref)

    slot = _prefetch_and_wait(gather, idx_now, idx_next, kbuf, vbuf, sems)
    for i in range(block_q):  # static: each query's heads against its own gathered rows
        ids = idx_vmem[pl.ds(i, 1), :]
        valid = (ids >= 0) & (ids < num_keys)
        s = math.scores(q_ref[i], _rows(kbuf, slot, i, block_k), valid, scale)
        m, l, acc = math.online_softmax_step(s, _rows(vbuf, slot, i, block_k), m_ref[i], l_ref[i],
                                             acc_ref[i])
        m_ref[i], l_ref[i], acc_ref[i] = m, l, acc

    @pl.when(block == pl.num_programs(2) - 1)
    def _finish():
        for i in range(block_q):
            out, lse = math.finalize(m_ref[i], l_ref[i], acc_ref[i])
            out_ref[i] = out.astype(out_ref.dtype)
            lse_ref[i] = lse


def backward(
    q: jax.Array,  # [batch', q_len, heads, d_qk]
    k: jax.Array,  # [batch', kv_len, d_qk]
    v: jax.Array,  # [batch', kv_len, d_v]
    idx: jax.Array,  # int32 [batch, q_len, topk], sorted
    dout: jax.Array,  # [batch', q_len, heads, d_v]
    lse: jax.Array,  # f32 [batch', q_len, heads, 1]
    delta: jax.Array,  # f32 [batch', q_len, heads, 1]
    *,
    scale: float,
    block_q: int,
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
    qb, idxb, doutb, lseb, deltab = _by_query_blocks(block_q, q, idx, dout, lse, delta)
    q_blocks = qb.shape[1]
    out_shape = (jax.ShapeDtypeStruct((batch, q_blocks, block_q, heads, d_qk), q.dtype),
                 jax.ShapeDtypeStruct((batch, q_blocks, block_q, topk, d_qk), jnp.float32),
                 jax.ShapeDtypeStruct((batch, q_blocks, block_q, topk, d_v), jnp.float32))
    token = lambda *shape: pl.BlockSpec((None, None, block_q, *shape), lambda b, t, j: (b, t, 0, 0, 0))
    slots = lambda d: pl.BlockSpec((None, None, block_q, block_k, d), lambda b, t, j: (b, t, 0, j, 0))
    kernel = functools.partial(_backward_kernel, block_q=block_q, block_k=block_k, scale=scale,
                               num_keys=kv_len)
    kernel, args, in_specs, aliases = poison.with_poison(
        kernel, args=[idxb, idxb, idxb, qb, k[:, :, None], v[:, :, None], doutb, lseb, deltab],
        in_specs=_specs(qb.shape, topk, block_q, block_k, heads_per_batch)
        + [token(heads, d_v), token(heads, 1), token(heads, 1)],
        out_shape=out_shape,
    )
    dq, dk_slots, dv_slots = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(batch, q_blocks, topk // block_k),
        in_specs=in_specs,
        out_specs=(token(heads, d_qk), slots(d_qk), slots(d_v)),
        scratch_shapes=_buffers(block_q, block_k, d_qk, d_v, k.dtype) + [
            pltpu.VMEM((block_q, heads, d_qk), jnp.float32),
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
    return tuple(_from_query_blocks(q_len, dq, dk_slots, dv_slots))


def _backward_kernel(
    idx_now, idx_next, idx_vmem, q_ref, k_hbm, v_hbm,
    dout_ref,  # [block_q, heads, d_v]
    lse_ref, delta_ref,  # f32 [block_q, heads, 1]
    dq_ref,  # [block_q, heads, d_qk]
    dk_ref,  # f32 [block_q, block_k, d_qk] per-slot contributions
    dv_ref,  # f32 [block_q, block_k, d_v]
    kbuf, vbuf, sems,
    dq_acc,  # VMEM f32 [block_q, heads, d_qk]
    *,
    block_q: int,
    block_k: int,
    scale: float,
    num_keys: int,
):
    block = pl.program_id(2)
    gather = functools.partial(_gather, k_hbm=k_hbm, v_hbm=v_hbm, kbuf=kbuf, vbuf=vbuf,
                               sems=sems, batch=pl.program_id(0), block_q=block_q,
                               block_k=block_k, num_keys=num_keys)

    @pl.when(block == 0)
    def _init():
        dq_acc[...] = jnp.zeros_like(dq_acc)

    slot = _prefetch_and_wait(gather, idx_now, idx_next, kbuf, vbuf, sems)
    for i in range(block_q):
        ids = idx_vmem[pl.ds(i, 1), :]
        valid = (ids >= 0) & (ids < num_keys)
        dq, dk, dv = math.block_grads(
            q_ref[i], _rows(kbuf, slot, i, block_k), _rows(vbuf, slot, i, block_k), dout_ref[i],
            valid, lse_ref[i], delta_ref[i], scale,
        )
        dq_acc[i] += dq
        dk_ref[i] = dk
        dv_ref[i] = dv

    @pl.when(block == pl.num_programs(2) - 1)
    def _finish():
        dq_ref[...] = dq_acc[...].astype(dq_ref.dtype)
