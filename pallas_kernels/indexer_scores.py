"""Lightning indexer scoring for DSA: ``scores[b,t,s] = sum_h w[b,t,h] relu(q[b,t,h] . k[b,s])``.

Why a kernel: the indexer scores every (query, key) pair, and the obvious jnp version
materialises the [q_len, kv_len, index_heads] ReLU intermediate before the weighted sum.
The kernel keeps one [block_q, block_k] f32 tile in fast memory, adds each head's
weighted ReLU into it, and writes only the [q_len, kv_len] scores that the top-k
selection (``select_topk``) reads. Causal tiles that are entirely masked skip the matmuls.

Masking: with ``causal``, key s is visible to query t when s <= t + q_offset (q_offset =
absolute position of the first query, for chunked prefill); masked scores are -inf.
``q_offset`` may be a traced integer.

One kernel body serves TPU (q_offset read from SMEM) and Triton (q_offset read from
global memory; heads and d padded to powers of two). Gradients: a custom VJP in blocked
jnp (``bwd_query_chunk`` queries at a time, never the full [q_len, kv_len, heads]
tensor), so the model may train the indexer through this function; the top-k indices
themselves are of course not differentiable.
Reference: ``indexer_scores_reference``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import backend as backend_lib
from pallas_kernels import block_sizes, poison

_NT = (((1,), (1,)), ((), ()))


@dataclasses.dataclass(frozen=True)
class _Config:
    causal: bool
    block_q: int
    block_k: int
    bwd_query_chunk: int
    backend: str
    interpret: bool


def indexer_scores(
    q: jax.Array,  # [batch, q_len, index_heads, d]
    k: jax.Array,  # [batch, kv_len, d]
    weights: jax.Array,  # [batch, q_len, index_heads]
    *,
    causal: bool = True,
    q_offset: int | jax.Array = 0,
    block_q: int | None = None,
    block_k: int | None = None,
    interpret: bool | None = None,
    backend: str | None = None,
    bwd_query_chunk: int = 512,
) -> jax.Array:  # f32 [batch, q_len, kv_len], -inf where masked
    """Fused weighted-ReLU indexer scores. See module docstring."""
    name = backend_lib.resolve_backend(backend)
    defaults = block_sizes.indexer_blocks(name)
    config = _Config(
        causal=bool(causal),
        block_q=block_q or defaults.block_q,
        block_k=block_k or defaults.block_k,
        bwd_query_chunk=max(1, int(bwd_query_chunk)),
        backend=name,
        interpret=backend_lib.resolve_interpret(interpret, name),
    )
    return _indexer_scores(q, k, weights, jnp.asarray(q_offset, jnp.int32), config)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _indexer_scores(q, k, weights, q_offset, config):
    return _forward(q, k, weights, q_offset, config)


def _forward(q, k, weights, q_offset, config: _Config):
    batch, q_len, heads, d = q.shape
    kv_len = k.shape[1]
    name = config.backend
    bq = backend_lib.fit_block(q_len, config.block_q, name, minor=False)
    bk = backend_lib.fit_block(kv_len, config.block_k, name, minor=True)
    q_pad, k_pad = backend_lib.round_up(q_len, bq), backend_lib.round_up(kv_len, bk)
    heads_p, d_p = heads, d
    if backend_lib.formulation(name) == "gpu":  # Triton tiles are powers of two
        heads_p = backend_lib.fit_block(heads, 1 << 30, "gpu", minor=False)
        d_p = backend_lib.fit_block(d, 1 << 30, "gpu", minor=True)
    qt = jnp.pad(q, ((0, 0), (0, q_pad - q_len), (0, heads_p - heads), (0, d_p - d)))
    qt = qt.transpose(0, 2, 1, 3)  # [batch, heads, q_pad, d]: one head is a clean tile
    kp = jnp.pad(k, ((0, 0), (0, k_pad - kv_len), (0, d_p - d)))
    wp = jnp.pad(weights, ((0, 0), (0, q_pad - q_len), (0, heads_p - heads)))

    if backend_lib.formulation(name) == "gpu":
        offset_spec = pl.BlockSpec(memory_space=pl.ANY)
    else:
        offset_spec = pl.BlockSpec(memory_space=pltpu.SMEM)
    in_specs = [
        offset_spec,
        pl.BlockSpec((None, heads_p, bq, d_p), lambda b, i, j: (b, 0, i, 0)),
        pl.BlockSpec((None, bk, d_p), lambda b, i, j: (b, j, 0)),
        pl.BlockSpec((None, bq, heads_p), lambda b, i, j: (b, i, 0)),
    ]
    out_shape = jax.ShapeDtypeStruct((batch, q_pad, k_pad), jnp.float32)
    kernel = functools.partial(
        _kernel, block_q=bq, block_k=bk, heads=heads_p, kv_len=kv_len, causal=config.causal)
    kernel, args, in_specs, aliases = poison.with_poison(
        kernel, args=[jnp.reshape(q_offset, (1,)), qt, kp, wp], in_specs=in_specs,
        out_shape=out_shape)
    scores = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(batch, q_pad // bq, k_pad // bk),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((None, bq, bk), lambda b, i, j: (b, i, j)),
        input_output_aliases=aliases,
        compiler_params=backend_lib.compiler_params(
            name, ("parallel", "parallel", "parallel"), config.interpret),
        interpret=config.interpret,
        cost_estimate=pl.CostEstimate(
            flops=2 * batch * q_pad * k_pad * heads_p * (d_p + 1),
            transcendentals=0,
            bytes_accessed=(qt.size * qt.dtype.itemsize * (k_pad // bk)
                            + kp.size * kp.dtype.itemsize * (q_pad // bq)
                            + batch * q_pad * k_pad * 4),
        ),
        name="indexer_scores",
    )(*args)
    return scores[:, :q_len, :kv_len]


def _kernel(
    offset_ref,  # int32 [1]
    q_ref,  # [heads, block_q, d]
    k_ref,  # [block_k, d]
    w_ref,  # [block_q, heads]
    out_ref,  # f32 [block_q, block_k]
    *,
    block_q: int,
    block_k: int,
    heads: int,
    kv_len: int,
    causal: bool,
):
    first_query = pl.program_id(1) * block_q + offset_ref[0]
    first_key = pl.program_id(2) * block_k
    needed = first_key < kv_len
    if causal:
        needed = jnp.logical_and(needed, first_key <= first_query + block_q - 1)

    @pl.when(needed)
    def _score():
        keys = k_ref[...]
        acc = jnp.zeros((block_q, block_k), jnp.float32)
        for h in range(heads):  # static: each head is one [block_q, d] x [d, block_k] matmul
            s = jax.lax.dot_general(q_ref[h], keys, _NT, preferred_element_type=jnp.float32)
            acc = acc + jnp.maximum(s, 0.0) * w_ref[:, h:h + 1].astype(jnp.float32)
        key_pos = first_key + jax.lax.broadcasted_iota(jnp.int32, acc.shape, 1)
        visible = key_pos < kv_len
        if causal:
            query_pos = first_query + jax.lax.broadcasted_iota(jnp.int32, acc.shape, 0)
            visible = jnp.logical_and(visible, key_pos <= query_pos)
        out_ref[...] = jnp.where(visible, acc, -jnp.inf)

    @pl.when(jnp.logical_not(needed))
    def _masked():
        out_ref[...] = jnp.full(out_ref.shape, -jnp.inf, out_ref.dtype)


def _indexer_scores_fwd(q, k, weights, q_offset, config):
    return _forward(q, k, weights, q_offset, config), (q, k, weights, q_offset)


def _indexer_scores_bwd(config, residuals, dscores):
    """Blocked jnp backward: per query chunk, recompute q.k and push dscores through."""
    q, k, weights, q_offset = residuals
    batch, q_len = q.shape[:2]
    chunk = min(config.bwd_query_chunk, q_len)
    num_chunks = -(-q_len // chunk)
    pad = num_chunks * chunk - q_len
    pad_t = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    q_p, w_p, ds_p = pad_t(q), pad_t(weights), pad_t(dscores)
    kf = k.astype(jnp.float32)

    def one_chunk(dk, c):
        take = lambda x: jax.lax.dynamic_slice_in_dim(x, c * chunk, chunk, axis=1)
        qc, wc, dsc = take(q_p).astype(jnp.float32), take(w_p).astype(jnp.float32), take(ds_p)
        visible = _visible(c * chunk + q_offset, chunk, k.shape[1], config.causal)
        dsc = jnp.where(visible, dsc, 0.0)  # masked scores are constants (-inf)
        s = jnp.einsum("bthd,bsd->bths", qc, kf)
        gate = (s > 0).astype(jnp.float32)
        dw = jnp.einsum("bts,bths->bth", dsc, jnp.maximum(s, 0.0))
        ds_h = dsc[:, :, None, :] * wc[..., None] * gate  # [batch, chunk, heads, kv_len]
        dq = jnp.einsum("bths,bsd->bthd", ds_h, kf)
        dk = dk + jnp.einsum("bths,bthd->bsd", ds_h, qc)
        return dk, (dq, dw)

    dk, (dq, dw) = jax.lax.scan(one_chunk, jnp.zeros(k.shape, jnp.float32), jnp.arange(num_chunks))
    unchunk = lambda x: jnp.moveaxis(x, 0, 1).reshape(batch, num_chunks * chunk,
                                                      *x.shape[3:])[:, :q_len]
    return (unchunk(dq).astype(q.dtype), dk.astype(k.dtype), unchunk(dw).astype(weights.dtype),
            None)


_indexer_scores.defvjp(_indexer_scores_fwd, _indexer_scores_bwd)


def _visible(first_query, q_len: int, kv_len: int, causal: bool) -> jax.Array:
    """bool [q_len, kv_len]: key s visible to query t (absolute position first_query + t)."""
    if not causal:
        return jnp.ones((q_len, kv_len), bool)
    query_pos = first_query + jnp.arange(q_len)[:, None]
    return jnp.arange(kv_len)[None, :] <= query_pos


def indexer_scores_reference(
    q: jax.Array,  # [batch, q_len, index_heads, d]
    k: jax.Array,  # [batch, kv_len, d]
    weights: jax.Array,  # [batch, q_len, index_heads]
    *,
    causal: bool = True,
    q_offset: int | jax.Array = 0,
    query_chunk: int | None = None,
) -> jax.Array:  # f32 [batch, q_len, kv_len]
    """Pure-jnp reference (and the ``xla`` path), computed in f32.

    It materialises [batch, q_len, heads, kv_len]; at long context pass ``query_chunk``
    to score that many queries at a time (``lax.map``).
    """
    offset = jnp.asarray(q_offset, jnp.int32)
    q_len = q.shape[1]
    if query_chunk is None or query_chunk >= q_len:
        return _reference_block(q, k, weights, offset, causal)
    chunk = int(query_chunk)
    num_chunks = -(-q_len // chunk)
    pad = num_chunks * chunk - q_len
    pad_t = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    split = lambda x: jnp.moveaxis(x.reshape(x.shape[0], num_chunks, chunk, *x.shape[2:]), 1, 0)
    scores = jax.lax.map(
        lambda args: _reference_block(args[0], k, args[1], offset + args[2] * chunk, causal),
        (split(pad_t(q)), split(pad_t(weights)), jnp.arange(num_chunks)))
    return jnp.moveaxis(scores, 0, 1).reshape(q.shape[0], num_chunks * chunk, -1)[:, :q_len]


def _reference_block(q, k, weights, q_offset, causal):
    s = jnp.einsum("bthd,bsd->bths", q.astype(jnp.float32), k.astype(jnp.float32))
    scores = jnp.einsum("bths,bth->bts", jnp.maximum(s, 0.0), weights.astype(jnp.float32))
    visible = _visible(q_offset, q.shape[1], k.shape[1], causal)
    return jnp.where(visible, scores, -jnp.inf)


def select_topk(scores: jax.Array, topk: int) -> jax.Array:
    """int32 [..., topk] positions of the largest scores; -1 where fewer are visible.

    Feeds ``sparse_topk_attention``: a slot whose score is -inf (masked) becomes -1.
    If kv_len < topk the trailing slots are -1.
    """
    kv_len = scores.shape[-1]
    take = min(topk, kv_len)
    values, positions = jax.lax.top_k(scores, take)
    positions = jnp.where(values == -jnp.inf, -1, positions).astype(jnp.int32)
    if take < topk:
        pad = [(0, 0)] * (scores.ndim - 1) + [(0, topk - take)]
        positions = jnp.pad(positions, pad, constant_values=-1)
    return positions
