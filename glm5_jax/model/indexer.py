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
from glm5_jax.model.linear import Projection, dtype_of
from glm5_jax.model.norms import LayerNorm
from glm5_jax.model.rope import apply_interleaved_rope

NO_KEY = -1  # marks a top-k slot that holds no valid key


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
        weights = self.weights_proj(x.astype(jnp.float32)) * (c.index_n_heads**-0.5)
        return q.astype(jnp.float32), k[:, :, 0, :].astype(jnp.float32), weights

    def __call__(self, x: jax.Array, q_resid: jax.Array, cos: jax.Array, sin: jax.Array,
                 mask: jax.Array) -> jax.Array:
        """Index scores [batch, q_len, kv_len] (float32), -inf where ``mask`` is False."""
        q, k, weights = self.queries_keys_weights(x, q_resid, cos, sin)
        scale = self.config.index_head_dim**-0.5
        if self.config.attention_impl == "pallas":
            # relu(scale * x) = scale * relu(x) for scale > 0: fold the scale into the weights.
            scores = kernel_dispatch.indexer_scores(q, k, weights * scale)
            return jnp.where(mask, scores, -jnp.inf)
        return index_scores(q, k, weights, mask, scale)


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
