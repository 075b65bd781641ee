"""Top-k sparse attention for DSA: each query attends only to its selected positions.

Why: DeepSeek Sparse Attention lets a lightning indexer pick ``index_topk`` keys per
query; attention over just those keys costs O(q_len * topk) instead of O(q_len^2). The
kernels gather the selected rows themselves (never materialising a [q_len, topk, d]
copy in the forward pass) and use a flash-style online softmax over blocks of them.

Shapes (MLA): q [batch, q_len, heads, d_qk], k [batch, kv_len, kv_heads, d_qk],
v [batch, kv_len, kv_heads, d_v] with kv_heads == 1 (one shared latent per token: the
absorbed/MQA form that DSA uses) or kv_heads == heads. topk_indices
[batch, q_len, topk] int32; a slot outside [0, kv_len) (the indexer marks them -1) is
ignored. Causality is the indexer's job: slots it masked must arrive as -1. Slots are
counted as given (a position listed twice is attended twice).

Returns (out [batch, q_len, heads, d_v] in q.dtype, accumulated in f32;
lse [batch, q_len, heads] f32). A query with no valid slot gets out = 0, lse = -inf.

Kernels: sparse_attention_tpu.py (DMA gathers, ``block_q`` queries per grid step, one DMA
per run of consecutive positions: indices are sorted per query first; the one cpu
interprets) and
sparse_attention_gpu.py (Triton pointer gathers); per-block math in
sparse_attention_math.py. With kv_heads == heads the heads are folded into the batch so
both cases run the same shared-key kernel.

Gradients (custom VJP, also O(q_len * topk)): a Pallas backward kernel recomputes the
probabilities from the saved lse, accumulates dq, and emits each slot's dk/dv
contribution; those are scatter-added into [kv_len] positions by XLA
(``.at[].add``), ``bwd_query_chunk`` query tokens at a time so the per-slot buffer stays
bounded. The cotangent of lse is honoured (it shifts delta).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import backend as backend_lib
from pallas_kernels import block_sizes, sparse_attention_gpu, sparse_attention_tpu


@dataclasses.dataclass(frozen=True)
class _Config:
    scale: float
    block_q: int  # query tokens per grid step (TPU formulation)
    block_k: int
    heads_per_batch: int  # >1 when per-head keys were folded into the batch
    bwd_query_chunk: int
    backend: str
    interpret: bool


def sparse_topk_attention(
    q: jax.Array,  # [batch, q_len, heads, d_qk]
    k: jax.Array,  # [batch, kv_len, kv_heads, d_qk], kv_heads in {1, heads}
    v: jax.Array,  # [batch, kv_len, kv_heads, d_v]
    topk_indices: jax.Array,  # int32 [batch, q_len, topk], -1 = invalid
    *,
    scale: float,
    block_k: int | None = None,
    block_q: int | None = None,
    interpret: bool | None = None,
    backend: str | None = None,
    bwd_query_chunk: int = 256,
) -> tuple[jax.Array, jax.Array]:
    """Sparse attention over the selected keys; returns (out, lse). See module docstring."""
    batch, q_len, heads, d_qk = q.shape
    kv_heads = k.shape[2]
    if kv_heads not in (1, heads) or v.shape[2] != kv_heads:
        raise ValueError(f"kv_heads must be 1 or heads={heads}; got k {k.shape}, v {v.shape}")
    if topk_indices.shape[:2] != (batch, q_len):
        raise ValueError(f"topk_indices {topk_indices.shape} does not match q {q.shape}")
    name = backend_lib.resolve_backend(backend)
    topk = topk_indices.shape[2]
    requested = block_k or block_sizes.sparse_attention_blocks(name).block_k
    block = _fit_block_k(topk, requested, name)
    topk_pad = backend_lib.round_up(topk, block)
    idx = topk_indices.astype(jnp.int32)
    if backend_lib.formulation(name) == "tpu":
        # Slot order does not change the result; sorted, consecutive positions sit in
        # consecutive slots and the TPU kernel fetches each such run with one DMA.
        idx = jnp.sort(idx, axis=-1)
    if topk_pad != topk:
        idx = jnp.pad(idx, ((0, 0), (0, 0), (0, topk_pad - topk)), constant_values=-1)

    if kv_heads == 1:
        qf, kf, vf, r = q, k[:, :, 0], v[:, :, 0], 1
    else:  # fold heads into the batch: [batch * heads, q_len, 1, d]
        qf = q.transpose(0, 2, 1, 3).reshape(batch * heads, q_len, 1, d_qk)
        kf = k.transpose(0, 2, 1, 3).reshape(batch * heads, k.shape[1], d_qk)
        vf = v.transpose(0, 2, 1, 3).reshape(batch * heads, v.shape[1], v.shape[3])
        r = heads
    config = _Config(
        scale=float(scale), block_k=block, heads_per_batch=r,
        block_q=max(1, min(block_q or block_sizes.sparse_attention_blocks(name).block_q, q_len)),
        bwd_query_chunk=max(1, min(int(bwd_query_chunk), q_len)), backend=name,
        interpret=backend_lib.resolve_interpret(interpret, name),
    )
    out, lse = _sparse_attention(qf, kf, vf.astype(kf.dtype), idx, config)
    if kv_heads == 1:
        return out, lse
    out = out.reshape(batch, heads, q_len, -1).transpose(0, 2, 1, 3)
    lse = lse.reshape(batch, heads, q_len).transpose(0, 2, 1)
    return out, lse


def _fit_block_k(topk: int, block: int, backend: str) -> int:
    if backend == "gpu":
        return backend_lib.fit_block(topk, block, backend, minor=False)
    # TPU: the VMEM copy of the indices is a lane dimension; interpreter: any size.
    return backend_lib.fit_block(topk, block, backend, minor=backend == "tpu")


def _kernels(config: _Config):
    if backend_lib.formulation(config.backend) == "gpu":
        return sparse_attention_gpu
    return sparse_attention_tpu


def _kernel_args(config: _Config) -> dict:
    args = {"scale": config.scale, "block_k": config.block_k,
            "heads_per_batch": config.heads_per_batch, "backend": config.backend,
            "interpret": config.interpret}
    if backend_lib.formulation(config.backend) == "tpu":
        args["block_q"] = config.block_q
    return args


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _sparse_attention(q, k, v, idx, config):
    out, lse = _kernels(config).forward(q, k, v, idx, **_kernel_args(config))
    return out, lse[..., 0]


def _sparse_attention_fwd(q, k, v, idx, config):
    out, lse = _sparse_attention(q, k, v, idx, config)
    return (out, lse), (q, k, v, idx, out, lse)


def _sparse_attention_bwd(config, residuals, cotangents):
    q, k, v, idx, out, lse = residuals
    dout, dlse = cotangents
    dout = dout.astype(q.dtype)
    # d lse / d s = p, so an lse cotangent enters exactly like a shift of delta.
    delta = (jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
             - dlse.astype(jnp.float32))
    batch, q_len = q.shape[:2]
    chunk = config.bwd_query_chunk
    num_chunks = -(-q_len // chunk)
    pad = num_chunks * chunk - q_len

    def pad_tokens(x, value=0):
        if pad == 0:
            return x
        return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=value)

    q_p, dout_p = pad_tokens(q), pad_tokens(dout)
    lse_p, delta_p = pad_tokens(lse[..., None]), pad_tokens(delta[..., None])
    idx_p = pad_tokens(idx, -1)
    kv_len = k.shape[1]
    r = config.heads_per_batch
    kernels = _kernels(config)

    def one_chunk(carry, c):
        dk, dv = carry
        take = lambda x: jax.lax.dynamic_slice_in_dim(x, c * chunk, chunk, axis=1)
        idx_c = take(idx_p)
        dq_c, dk_slots, dv_slots = kernels.backward(
            take(q_p), k, v, idx_c, take(dout_p), take(lse_p), take(delta_p),
            **_kernel_args(config))
        # Scatter the per-slot contributions; invalid slots point past the end and drop.
        positions = jnp.repeat(idx_c, r, axis=0)  # [batch', chunk, topk]
        positions = jnp.where((positions >= 0) & (positions < kv_len), positions, kv_len)
        rows = jnp.arange(dk.shape[0])[:, None, None]
        dk = dk.at[rows, positions].add(dk_slots, mode="drop")
        dv = dv.at[rows, positions].add(dv_slots, mode="drop")
        return (dk, dv), dq_c

    init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    (dk, dv), dq = jax.lax.scan(one_chunk, init, jnp.arange(num_chunks))
    dq = jnp.moveaxis(dq, 0, 1).reshape(batch, num_chunks * chunk, *q.shape[2:])[:, :q_len]
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_sparse_attention.defvjp(_sparse_attention_fwd, _sparse_attention_bwd)


def sparse_topk_attention_reference(
    q: jax.Array,  # [batch, q_len, heads, d_qk]
    k: jax.Array,  # [batch, kv_len, kv_heads, d_qk]
    v: jax.Array,  # [batch, kv_len, kv_heads, d_v]
    topk_indices: jax.Array,  # int32 [batch, q_len, topk]
    *,
    scale: float,
    query_chunk: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Pure-jnp reference (and the ``xla`` path): gather the selected rows, then softmax.

    Computes in f32. It materialises the gathered [q_len, topk, kv_heads, d] rows, so
    at long context pass ``query_chunk`` to process that many queries at a time
    (``lax.map``); cost stays O(q_len * topk) either way.
    """
    q_len = q.shape[1]
    if query_chunk is None or query_chunk >= q_len:
        return _reference_block(q, k, v, topk_indices, scale)
    chunk = int(query_chunk)
    num_chunks = -(-q_len // chunk)
    pad = num_chunks * chunk - q_len
    q_p = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    idx_p = jnp.pad(topk_indices, ((0, 0), (0, pad), (0, 0)), constant_values=-1)
    split = lambda x: jnp.moveaxis(x.reshape(x.shape[0], num_chunks, chunk, *x.shape[2:]), 1, 0)
    out, lse = jax.lax.map(lambda qi: _reference_block(qi[0], k, v, qi[1], scale),
                           (split(q_p), split(idx_p)))
    merge = lambda x: jnp.moveaxis(x, 0, 1).reshape(x.shape[1], num_chunks * chunk,
                                                    *x.shape[3:])[:, :q_len]
    return merge(out), merge(lse)


def _reference_block(q, k, v, topk_indices, scale):
    kv_len = k.shape[1]
    valid = (topk_indices >= 0) & (topk_indices < kv_len)  # [batch, q_len, topk]
    safe = jnp.where(valid, topk_indices, 0)
    gather = jax.vmap(lambda rows, ids: rows[ids])  # per batch: [kv_len, ...] -> [q, topk, ...]
    # Upcast before gathering, so the gradient's scatter-add over slots runs in f32 (in
    # bf16 the sum over many slots hitting one key would round at every add).
    k_sel = gather(k.astype(jnp.float32), safe)  # [batch, q_len, topk, kv_heads, d_qk]
    v_sel = gather(v.astype(jnp.float32), safe)
    qf = q.astype(jnp.float32)
    if k.shape[2] == 1:  # shared latent: never broadcast the gathered rows over heads
        s = jnp.einsum("bthd,btjd->bthj", qf, k_sel[:, :, :, 0]) * scale
    else:
        s = jnp.einsum("bthd,btjhd->bthj", qf, k_sel) * scale
    s = jnp.where(valid[:, :, None, :], s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)
    l = jnp.sum(jnp.exp(s - m_safe), axis=-1, keepdims=True)
    has_keys = l > 0
    lse = jnp.where(has_keys, m_safe + jnp.log(jnp.where(has_keys, l, 1.0)), -jnp.inf)
    p = jnp.exp(s - jnp.where(has_keys, lse, 0.0))
    if v.shape[2] == 1:
        out = jnp.einsum("bthj,btjd->bthd", p, v_sel[:, :, :, 0])
    else:
        out = jnp.einsum("bthj,btjhd->bthd", p, v_sel)
    return out.astype(q.dtype), lse[..., 0]
