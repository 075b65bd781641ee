"""MLA + DSA attention over the latent cache, for prefill, decode and speculative verification.

Same parameters (names, shapes) as ``glm5_jax.model.attention.MLAttention``; what differs is
where keys come from. The new tokens' latent, rope key and indexer key are written into the
cache, and queries attend in absorbed form (q_nope projected through W_uk into the latent
space, the latent output expanded through W_uv once), so a step never expands the cache.

Selection follows the full forward exactly: a query at position t sees keys at slots <= t; when
t + 1 > index_topk a ``full`` layer picks the index_topk best of them with the lightning indexer
and a ``shared`` layer reuses the previous full layer's pick; otherwise every visible key is
selected. That last case is where the indexer is skipped: statically when the key axis is no
longer than index_topk, and with ``lax.cond`` when every query in the batch is that short.

``indexer_mode``: ``"auto"`` (the above), ``"always"`` (never skip: measures what skipping
saves; same outputs) or ``"never"`` (dense MLA, DSA off: a baseline, different outputs once
contexts exceed index_topk).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from glm5_jax.config import ModelConfig
from glm5_jax.model import sparse_attention as sa
from glm5_jax.model.indexer import NO_KEY, LightningIndexer, index_scores, select_topk
from glm5_jax.model.linear import Projection, dtype_of
from glm5_jax.model.norms import RMSNorm
from glm5_jax.model.rope import apply_interleaved_rope
from glm5_jax.sample.cache import INDEX_KEY, LATENT, ROPE_KEY, write_rows

INDEXER_MODES = ("auto", "always", "never")
CACHE_AXES = ("activation_batch", "activation_length", "activation_kv")


def all_visible_selection(positions: jax.Array, k: int) -> jax.Array:
    """[b, s, k]: slots 0..k-1 where visible (slot <= position), NO_KEY elsewhere.

    Equals the indexer's choice for any query whose context (position + 1) is at most k.
    """
    slots = jnp.arange(k, dtype=jnp.int32)
    return jnp.where(slots <= positions[..., None], slots, NO_KEY)


def latent_attention(q_latent: jax.Array, q_rope: jax.Array, latent: jax.Array, k_rope: jax.Array,
                     visible: jax.Array, scale: float) -> jax.Array:
    """Absorbed MLA over every key: q_latent [b, s, h, c], q_rope [b, s, h, r], latent [b, t, c],
    k_rope [b, t, r], visible [b, s, t] -> latent output [b, s, h, c]."""
    logits = (jnp.einsum("bshc,btc->bsht", q_latent, latent)
              + jnp.einsum("bshr,btr->bsht", q_rope, k_rope)).astype(jnp.float32) * scale
    logits = jnp.where(visible[:, :, None, :], logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1).astype(latent.dtype)
    return jnp.einsum("bsht,btc->bshc", probs, latent)


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
                 cache: dict, prev_topk: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
        """x [b, s, d] at positions [b, s] (row i: start_i .. start_i + s - 1), this layer's cache
        {latent [b, T, c], rope_key [b, T, r], index_key [b, T, di]}, prev_topk [b, s, k]
        -> (out [b, s, d], topk [b, s, k], updated cache)."""
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

        start = positions[:, 0]
        if self.fresh:
            cache = {key: jax.lax.dynamic_update_slice(cache[key], value.astype(cache[key].dtype), (0, 0, 0))
                     for key, value in new.items()}
            keys = {key: value.astype(cache[key].dtype) for key, value in new.items()}
        else:
            cache = {key: write_rows(cache[key], value, start) for key, value in new.items()}
            keys = cache
        cache = {key: nn.with_logical_constraint(value, CACHE_AXES) for key, value in cache.items()}
        kv_len = keys[LATENT].shape[1]
        visible = jnp.arange(kv_len, dtype=jnp.int32)[None, None, :] <= positions[:, :, None]  # [b, s, t]

        k = min(c.index_topk, kv_len)
        dense = kv_len <= c.index_topk or self.indexer_mode == "never"
        if dense:
            topk = prev_topk
        elif self.runs_indexer:
            def run_indexer():
                scores = index_scores(index_q, keys[INDEX_KEY].astype(jnp.float32), index_w, visible,
                                      c.index_head_dim**-0.5)
                return select_topk(scores, k)

            if self.indexer_mode == "always":
                topk = run_indexer()
            else:
                every_query_short = jnp.all(positions < c.index_topk)
                topk = jax.lax.cond(every_query_short, lambda: all_visible_selection(positions, k),
                                    run_indexer)
        else:
            topk = prev_topk

        kv_b = jnp.asarray(self.kv_b_proj.kernel, q.dtype)
        q_latent = jnp.einsum("bshn,chn->bshc", q_nope, kv_b[..., :nope])  # W_uk absorbed
        q_latent = nn.with_logical_constraint(
            q_latent, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
        latent, rope_key = keys[LATENT].astype(q.dtype), keys[ROPE_KEY].astype(q.dtype)
        if dense:
            out_latent = latent_attention(q_latent, q_rope, latent, rope_key, visible, c.attention_scale)
        else:
            out_latent = sa.gathered_latent_attention(q_latent, q_rope, latent, rope_key, topk,
                                                      c.attention_scale)
        out = jnp.einsum("bshc,chv->bshv", out_latent, kv_b[..., nope:])  # W_uv once, at the end
        out = nn.with_logical_constraint(
            out, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
        return self.o_proj(out), topk, cache
