"""MLA + DSA attention over the latent cache, for prefill, decode and speculative verification.

Same parameters (names, shapes) as ``glm5_jax.model.attention.MLAttention``; what differs is
where keys come from. The new tokens' latent, rope key and indexer key are written into the
cache, and queries attend in absorbed form (q_nope projected through W_uk into the latent
space, the latent output expanded through W_uv once), so a step never expands the cache.

Selection follows the full forward exactly: a query at position t sees keys at slots <= t; when
t + 1 > index_topk a ``full`` layer picks the index_topk best of them with the lightning indexer
and a ``shared`` layer reuses the previous full layer's pick; otherwise every visible key is
selected. That last case is where the indexer is skipped: statically when the key axis is no
longer than index_topk, and with ``lax.switch`` when every query in the batch is that short;
past it, decode scores only a bucketed prefix of the cache covering the longest context.

``indexer_mode``: ``"auto"`` (the above), ``"always"`` (score every cached slot every step:
measures what skipping and bucketing save; same outputs) or ``"never"`` (dense MLA, DSA off:
a baseline whose outputs differ once contexts exceed index_topk).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from glm5_jax.config import ModelConfig
from glm5_jax.model import sparse_attention as sa
from glm5_jax.model.indexer import NO_KEY, LightningIndexer, index_scores, select_topk
from glm5_jax.model.linear import Projection, dtype_of
from glm5_jax.model.norms import RMSNorm
from glm5_jax.model.rope import apply_interleaved_rope
from glm5_jax.sample.cache import (
    INDEX_KEY,
    LATENT,
    ROPE_KEY,
    gather_layer_rows,
    write_layer_rows,
)
from glm5_jax.sample.latent_attention import latent_attention, selected_latent_attention

INDEXER_MODES = ("auto", "always", "never")


def all_visible_selection(positions: jax.Array, k: int) -> jax.Array:
    """[b, s, k]: slots 0..k-1 where visible (slot <= position), NO_KEY elsewhere.

    Equals the indexer's choice for any query whose context (position + 1) is at most k.
    """
    slots = jnp.arange(k, dtype=jnp.int32)
    return jnp.where(slots <= positions[..., None], slots, NO_KEY)


def context_buckets(kv_len: int, index_topk: int) -> list[int]:
    """Key-axis lengths the indexer may score in decode: 2k, 4k, ... below kv_len, then kv_len.

    Scores past a row's context are -inf and never selected, so scoring a prefix that covers
    every row's context selects exactly what scoring the whole capacity would; the bucket keeps
    per-step indexer cost proportional to the context, not the cache capacity, with a handful
    of static shapes.
    """
    bounds, bound = [], 2 * index_topk
    while bound < kv_len:
        bounds.append(bound)
        bound *= 2
    return bounds + [kv_len]


class CachedMLAttention(nn.Module):
    config: ModelConfig
    runs_indexer: bool = True
    fresh: bool = False  # prefill into an empty cache: the new tokens are all the keys there are
    indexer_mode: str = "auto"

    def setup(self) -> None:
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        std = c.initializer_range
        self.q_a_proj = Projection((c.hidden_size,), (c.q_lora_rank,), ("embed",), ("q_lora",), std, dt, pdt)
        self.q_a_layernorm = RMSNorm(1e-6, dt, pdt)
        self.q_b_proj = Projection((c.q_lora_rank,), (c.num_attention_heads, c.qk_head_dim), ("q_lora",),
                                   ("heads", "head_dim"), std, dt, pdt)
        self.kv_a_proj_with_mqa = Projection((c.hidden_size,), (c.kv_lora_rank + c.qk_rope_head_dim,), ("embed",),
                                             ("kv_lora",), std, dt, pdt)
        self.kv_a_layernorm = RMSNorm(1e-6, dt, pdt)
        self.kv_b_proj = Projection((c.kv_lora_rank,), (c.num_attention_heads, c.qk_nope_head_dim + c.v_head_dim),
                                    ("kv_lora",), ("heads", "head_dim"), std, dt, pdt)
        self.o_proj = Projection((c.num_attention_heads, c.v_head_dim), (c.hidden_size,), ("heads", "head_dim"),
                                 ("embed",), std, dt, pdt)
        if self.runs_indexer:
            self.indexer = LightningIndexer(c)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, positions: jax.Array,
                 cache: dict, layer: jax.Array, prev_topk: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
        """x [b, s, d] at positions [b, s] (row i: start_i .. start_i + s - 1); the stack's cache
        for this block-local layer {latent [R, b, T, c], rope_key [R, b, T, r], index_key [R, b, T, di]}
        and this layer's index in it; prev_topk [b, s, k] -> (out [b, s, d], topk [b, s, k], cache).

        The cache is updated in place (a scatter into the loop-carried buffer) and read by
        gathering the selected rows, so a decode step touches O(index_topk) latent rows, not the
        whole capacity; only the indexer scores every cached key, as DSA does.
        """
        c = self.config
        if self.indexer_mode not in INDEXER_MODES:
            raise ValueError(f"indexer_mode={self.indexer_mode!r}; allowed values: {list(INDEXER_MODES)}")
        nope = c.qk_nope_head_dim
        q_resid = self.q_a_layernorm(self.q_a_proj(x))
        q = self.q_b_proj(q_resid)  # [b, s, h, nope + rope]
        q_nope, q_rope = q[..., :nope], apply_interleaved_rope(q[..., nope:], cos, sin)
        compressed = self.kv_a_proj_with_mqa(x)
        new = {LATENT: self.kv_a_layernorm(compressed[..., : c.kv_lora_rank]),  # [b, s, c]
               ROPE_KEY: apply_interleaved_rope(compressed[..., None, c.kv_lora_rank:], cos, sin)[:, :, 0]}
        if self.runs_indexer:
            index_q, index_k, index_w = self.indexer.queries_keys_weights(x, q_resid, cos, sin)
            new[INDEX_KEY] = index_k  # [b, s, di]
        cache = {key: write_layer_rows(cache[key], new[key], layer, positions[:, 0], self.fresh) for key in new}

        def keys(key: str, bound: int | None = None) -> jax.Array:
            """Keys at slots [0, bound) of this layer [b, bound, w]: the new rows when prefilling."""
            if self.fresh:
                return new[key].astype(cache[key].dtype)[:, :bound]
            _, b, t, w = cache[key].shape
            return jax.lax.dynamic_slice(cache[key], (layer, 0, 0, 0), (1, b, bound or t, w))[0]

        kv_len = new[LATENT].shape[1] if self.fresh else cache[LATENT].shape[2]
        visible = jnp.arange(kv_len, dtype=jnp.int32)[None, None, :] <= positions[:, :, None]  # [b, s, t]
        k = min(c.index_topk, kv_len)
        dense = kv_len <= c.index_topk or self.indexer_mode == "never"
        if dense or not self.runs_indexer:
            topk = prev_topk
        else:
            def run_indexer(bound: int) -> jax.Array:
                scores = index_scores(index_q, keys(INDEX_KEY, bound).astype(jnp.float32), index_w,
                                      visible[:, :, :bound], c.index_head_dim**-0.5)
                return select_topk(scores, k)

            if self.indexer_mode == "always" or self.fresh:
                topk = run_indexer(kv_len)
            else:
                # Score only the slots the longest row can see, rounded up to a bucket; no scoring
                # at all while every context fits in index_topk.
                bounds = context_buckets(kv_len, c.index_topk)
                longest = jnp.max(positions) + 1
                branch = jnp.sum(longest > jnp.asarray([c.index_topk] + bounds[:-1], jnp.int32))
                topk = jax.lax.switch(branch, [lambda: all_visible_selection(positions, k)]
                                      + [functools.partial(run_indexer, bound) for bound in bounds])

        kv_b = jnp.asarray(self.kv_b_proj.kernel, q.dtype)
        q_latent = jnp.einsum("bshn,chn->bshc", q_nope, kv_b[..., :nope])  # W_uk absorbed
        q_latent = nn.with_logical_constraint(
            q_latent, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
        if dense:
            out_latent = latent_attention(q_latent, q_rope, keys(LATENT).astype(q.dtype),
                                          keys(ROPE_KEY).astype(q.dtype), visible, c.attention_scale)
        elif self.fresh:
            out_latent = sa.gathered_latent_attention(q_latent, q_rope, keys(LATENT).astype(q.dtype),
                                                      keys(ROPE_KEY).astype(q.dtype), topk, c.attention_scale)
        else:
            selected = {key: gather_layer_rows(cache[key], layer, topk).astype(q.dtype) for key in (LATENT, ROPE_KEY)}
            out_latent = selected_latent_attention(q_latent, q_rope, selected[LATENT], selected[ROPE_KEY],
                                                   topk != NO_KEY, c.attention_scale)
        out = jnp.einsum("bshc,chv->bshv", out_latent, kv_b[..., nope:])  # W_uv once, at the end
        out = nn.with_logical_constraint(
            out, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
        return self.o_proj(out), topk, cache
