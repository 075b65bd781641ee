"""The DSA lightning indexer: a cheap scorer that picks the top-k keys each query attends to.

I(t, s) = sum_h w(t, h) * ReLU(q(t, h) . k(s)), with a single key head shared by all index
heads, rope on the first ``qk_rope_head_dim`` dims, and a LayerNorm on the key. Selection is a
hard top-k, so the indexer gets no gradient through attention; it is trained by its own KL loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from glm5_jax.config import ModelConfig
from glm5_jax.model import kernel_dispatch
from glm5_jax.model.attention_mask import AttentionMask
from glm5_jax.model.linear import Projection, dtype_of
from glm5_jax.model.norms import LayerNorm
from glm5_jax.model.rope import apply_interleaved_rope

NO_KEY = -1  # marks a top-k slot that holds no valid key
KEY_BLOCK = 1024  # keys scored per step of the running top-k


class LightningIndexer(nn.Module):
    config: ModelConfig

    def setup(self) -> None:
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        std = c.initializer_range
        self.wq_b = Projection((c.q_lora_rank,), (c.index_n_heads, c.index_head_dim), ("q_lora",), ("index_heads", "head_dim"),
                               std, dt, pdt)
        self.wk = Projection((c.hidden_size,), (c.index_head_dim,), ("embed",), ("head_dim",), std, dt, pdt)
        self.k_norm = LayerNorm(epsilon=1e-6, dtype=dt, param_dtype=pdt)
        # Kept in float32 like the reference (its _keep_in_fp32_modules).
        self.weights_proj = Projection((c.hidden_size,), (c.index_n_heads,), ("embed",), ("index_heads",), std,
                                       jnp.float32, pdt)

    def queries_keys_weights(self, x: jax.Array, q_resid: jax.Array, cos: jax.Array, sin: jax.Array):
        """Index queries [b, s, hi, d], keys [b, s, d] and head weights [b, s, hi] (float32)."""
        c = self.config
        rope = c.qk_rope_head_dim
        q = self.wq_b(q_resid)
        q = jnp.concatenate([apply_interleaved_rope(q[..., :rope], cos, sin), q[..., rope:]], axis=-1)
        k = self.k_norm(self.wk(x))[:, :, None, :]
        k = jnp.concatenate([apply_interleaved_rope(k[..., :rope], cos, sin), k[..., rope:]], axis=-1)
        k = nn.with_logical_constraint(k[:, :, 0, :].astype(jnp.float32),
                                       ("activation_batch", "activation_kv_length", "activation_kv"))
        weights = self.weights_proj(x.astype(jnp.float32)) * (c.index_n_heads**-0.5)
        return q.astype(jnp.float32), k, weights

    def topk(self, x: jax.Array, q_resid: jax.Array, cos: jax.Array, sin: jax.Array,
             mask: AttentionMask, k: int) -> jax.Array:
        """The k best keys per query [b, s, k] (NO_KEY where fewer are valid). The XLA path
        scores one key block at a time into a running top-k: no [b, s, t] score matrix."""
        if self.config.attention_impl == "pallas":
            return select_topk(self(x, q_resid, cos, sin, mask), k)
        # Selection has no gradient: detached inputs keep autodiff out of the scan, which
        # otherwise saves each step's [b, s, key_block] top-k residuals (O(s^2) in all).
        q, keys, weights = map(jax.lax.stop_gradient, self.queries_keys_weights(x, q_resid, cos, sin))
        return blockwise_topk(q, keys, weights, mask, self.config.index_head_dim**-0.5, k)

    def __call__(self, x: jax.Array, q_resid: jax.Array, cos: jax.Array, sin: jax.Array,
                 mask: AttentionMask) -> jax.Array:
        """Index scores [batch, q_len, kv_len] (float32), -inf where ``mask`` is False: the
        whole matrix (the Pallas path and the references; ``topk`` avoids it)."""
        q, k, weights = self.queries_keys_weights(x, q_resid, cos, sin)
        scale = self.config.index_head_dim**-0.5
        if self.config.attention_impl == "pallas":
            # relu(scale * x) = scale * relu(x) for scale > 0: fold the scale into the weights.
            scores = kernel_dispatch.indexer_scores(q, k, weights * scale)
            return jnp.where(mask.dense(), scores, -jnp.inf)
        return index_scores(q, k, weights, mask.dense(), scale)


def index_scores(q: jax.Array, k: jax.Array, weights: jax.Array, mask: jax.Array,
                 softmax_scale: float) -> jax.Array:
    """Reference scoring: materialises [b, s, hi, t]; the Pallas kernel avoids that."""
    logits = jnp.einsum("bshd,btd->bsht", q, k) * softmax_scale
    scores = jnp.einsum("bsh,bsht->bst", weights, jax.nn.relu(logits))
    return jnp.where(mask, scores, -jnp.inf)


def select_topk(scores: jax.Array, k: int) -> jax.Array:
    """Top-k key positions [b, s, k] int32 per query; NO_KEY where fewer than k keys are valid."""
    k = min(k, scores.shape[-1])
    values, indices = jax.lax.top_k(scores, k)
    return jnp.where(jnp.isneginf(values), NO_KEY, indices).astype(jnp.int32)


def blockwise_topk(q: jax.Array, k: jax.Array, weights: jax.Array, mask: AttentionMask,
                   softmax_scale: float, topk: int, key_block: int = KEY_BLOCK) -> jax.Array:
    """``select_topk(index_scores(...), topk)`` scoring ``key_block`` keys at a time.

    A scan over key blocks keeps the best ``topk`` (value, position) pairs seen so far; each
    step merges them with the block's scores by ``lax.top_k``. The kept pairs come first in
    the merge, so ties go to the lower position, as ``lax.top_k`` on whole rows does: the
    result is the same, order included. Memory: [b, s, hi, key_block] instead of
    [b, s, hi, t], and the mask's [b, s, key_block] tile is built per step from segment ids.
    Rows no longer than a block (or not a multiple of one) score in one go.
    """
    b, s, _, _ = q.shape
    t = k.shape[1]
    if t <= key_block or t % key_block:
        return select_topk(index_scores(q, k, weights, mask.dense(), softmax_scale), topk)
    kept = min(topk, t)
    blocks = t // key_block
    key_blocks = jnp.moveaxis(k.reshape(b, blocks, key_block, k.shape[-1]), 1, 0)
    starts = jnp.arange(blocks, dtype=jnp.int32) * key_block

    def step(carry, block):
        values, positions = carry
        keys, start = block
        scores = index_scores(q, keys, weights, mask.block(0, s, start, key_block), softmax_scale)
        merged = jnp.concatenate([values, scores], axis=-1)
        values, order = jax.lax.top_k(merged, kept)
        # Slot o < kept is a kept pair, else the block's key start + o - kept. (Broadcasting
        # the block's positions to [b, s, key_block] instead let XLA hoist that broadcast
        # out of the loop for every block at once: [blocks, b, s, key_block], O(s^2).)
        kept_positions = jnp.take_along_axis(positions, jnp.minimum(order, kept - 1), axis=-1)
        return (values, jnp.where(order < kept, kept_positions, start + order - kept)), None

    init = (jnp.full((b, s, kept), -jnp.inf, jnp.float32), jnp.full((b, s, kept), NO_KEY, jnp.int32))
    (values, positions), _ = jax.lax.scan(step, init, (key_blocks, starts))
    return jnp.where(jnp.isneginf(values), NO_KEY, positions).astype(jnp.int32)
