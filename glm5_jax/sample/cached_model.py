"""GLM-5 over a latent cache: the main model's cached forward and the MTP drafter's.

``CachedGLM5`` has GLM5Model's parameter tree (embed_tokens, the two scanned stacks, norm,
lm_head, mtp_{j}), so ``variables`` from ``init_variables``, training or ``load_hf`` apply as
they are. One forward serves prefill (``fresh=True``: an empty cache, all rows start at
position 0), decode (one token per row) and speculative verification (a few tokens per row);
rows advance independently, each at its own positions.

``mtp_draft`` runs MTP module 0 with its own one-layer cache. Drafting chains it: at position p
it combines the hidden state that produced token p + 1 with that token's embedding and predicts
token p + 2 (the main model's hidden for verified positions, its own output for draft ones).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from glm5_jax.config import ModelConfig
from glm5_jax.model.decoder_layer import stack_layout
from glm5_jax.model.linear import Projection, dtype_of
from glm5_jax.model.norms import RMSNorm
from glm5_jax.model.rope import rope_angles
from glm5_jax.sample.cache import LATENT, MTP
from glm5_jax.sample.cached_layers import CachedDecoderLayer, CachedLayerStack


class CachedMTPModule(nn.Module):
    """MTPModule's parameters (enorm, hnorm, eh_proj, layer, head_norm) over a cache."""

    config: ModelConfig
    fresh: bool = False
    indexer_mode: str = "auto"

    @nn.compact
    def __call__(self, hidden, next_embeddings, cos, sin, positions, cache, topk):
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        joined = jnp.concatenate([RMSNorm(c.rms_norm_eps, dt, pdt, name="enorm")(next_embeddings),
                                  RMSNorm(c.rms_norm_eps, dt, pdt, name="hnorm")(hidden)], axis=-1)
        h = Projection((2 * c.hidden_size,), (c.hidden_size,), ("embed",), ("embed",),
                       c.initializer_range, dt, pdt, name="eh_proj")(joined)
        mlp_type = "sparse" if c.num_moe_layers else "dense"
        h, _, cache = CachedDecoderLayer(c, mlp_type, "full", self.fresh, self.indexer_mode, name="layer")(
            h, cos, sin, positions, cache, jnp.int32(0), topk)
        return h, RMSNorm(c.rms_norm_eps, dt, pdt, name="head_norm")(h), cache


def _select_rows(x: jax.Array, index: jax.Array | None) -> jax.Array:
    """x [b, s, d] -> x[i, index[i]] [b, d] when index [b] is given, else x unchanged."""
    if index is None:
        return x
    return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]


class CachedGLM5(nn.Module):
    config: ModelConfig
    fresh: bool = False
    indexer_mode: str = "auto"

    def setup(self) -> None:
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        self.embed_tokens = self.param(
            "embed_tokens",
            nn.with_logical_partitioning(nn.initializers.normal(c.initializer_range), ("vocab", "embed")),
            (c.vocab_size, c.hidden_size), pdt)
        for name, first, count in stack_layout(c):
            setattr(self, name, CachedLayerStack(c, c.mlp_layer_types[first], c.indexer_types[first:first + count],
                                                 self.fresh, self.indexer_mode))
        self.norm = RMSNorm(c.rms_norm_eps, dt, pdt)
        if not c.tie_word_embeddings:
            self.lm_head = Projection((c.hidden_size,), (c.vocab_size,), ("embed",), ("vocab",),
                                      c.initializer_range, dt, pdt)
        if c.num_mtp_layers:
            self.mtp_0 = CachedMTPModule(c, self.fresh, self.indexer_mode)

    def _embed(self, tokens: jax.Array) -> jax.Array:
        return nn.with_logical_constraint(
            jnp.take(self.embed_tokens, tokens, axis=0).astype(dtype_of(self.config.dtype)),
            ("activation_batch", "activation_length", "activation_embed"))

    def _head(self, normed: jax.Array) -> jax.Array:
        if self.config.tie_word_embeddings:
            return normed @ self.embed_tokens.T.astype(dtype_of(self.config.dtype))
        return self.lm_head(normed)

    def _initial_topk(self, batch: int, seq: int, cache_len: int) -> jax.Array:
        kv_len = seq if self.fresh else cache_len
        return jnp.zeros((batch, seq, min(self.config.index_topk, kv_len)), jnp.int32)

    def __call__(self, tokens: jax.Array, positions: jax.Array, cache: dict,
                 logit_index: jax.Array | None = None):
        """tokens/positions [b, s] -> (logits [b, s, vocab] or [b, vocab] at ``logit_index`` [b],
        pre-norm hidden [b, s, d] (the MTP drafter's input), updated cache)."""
        c = self.config
        batch, seq = tokens.shape
        cos, sin = rope_angles(c, positions)
        x = self._embed(tokens)
        some_layer = next(iter(cache[stack_layout(c)[0][0]].values()))
        topk = self._initial_topk(batch, seq, some_layer[LATENT].shape[2])
        new_cache = dict(cache)
        for name, _, _ in stack_layout(c):
            x, topk, new_cache[name] = getattr(self, name)(x, topk, cache[name], cos, sin, positions)
        logits = self._head(self.norm(_select_rows(x, logit_index)))
        return logits, x, new_cache

    def mtp_draft(self, hidden: jax.Array, next_tokens: jax.Array, positions: jax.Array, cache: dict,
                  logit_index: jax.Array | None = None):
        """hidden [b, s, d] (what produced next_tokens), next_tokens/positions [b, s]
        -> (draft logits [b, s, vocab] or [b, vocab], MTP hidden [b, s, d], updated cache)."""
        c = self.config
        batch, seq = next_tokens.shape
        cos, sin = rope_angles(c, positions)
        topk = self._initial_topk(batch, seq, cache[MTP][LATENT].shape[2])
        h, normed, mtp_cache = self.mtp_0(hidden, self._embed(next_tokens), cos, sin, positions,
                                          cache[MTP], topk)
        logits = self._head(_select_rows(normed, logit_index))
        return logits, _select_rows(h, logit_index), {**cache, MTP: mtp_cache}
