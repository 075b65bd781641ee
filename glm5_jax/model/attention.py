"""Multi-head latent attention (MLA) with DeepSeek Sparse Attention.

Queries and keys/values go through low-rank bottlenecks (q_lora_rank, kv_lora_rank); a shared
rope key of qk_rope_head_dim rides beside the kv latent. A ``full`` layer runs the lightning
indexer and attends only to its top-k keys per query; a ``shared`` layer reuses the top-k the
previous full layer chose. While the context is no longer than index_topk every causal key is
selected, so the indexer is skipped (a static decision on shapes).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from glm5_jax.config import ModelConfig
from glm5_jax.model.attention_mask import AttentionMask
from glm5_jax.model.indexer import LightningIndexer
from glm5_jax.model.linear import Projection, dtype_of
from glm5_jax.model.norms import RMSNorm
from glm5_jax.model.rope import apply_interleaved_rope
from glm5_jax.model import kernel_dispatch
from glm5_jax.model.blockwise_attention import blockwise_attention
from glm5_jax.model import sparse_attention as sa


KEY_AXES = ("activation_batch", "activation_kv_length", "activation_kv")


class MLAttention(nn.Module):
    config: ModelConfig
    runs_indexer: bool = True

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
        self.o_proj = Projection((c.num_attention_heads, c.v_head_dim), (c.hidden_size,), ("heads", "head_dim"), ("embed",), std, dt, pdt)
        if self.runs_indexer:
            self.indexer = LightningIndexer(c)

    def project(self, x: jax.Array, cos: jax.Array, sin: jax.Array):
        """The MLA projections: (q_resid [b, s, q_lora], q_nope [b, s, h, nope], q_rope
        [b, s, h, rope] (rotated), latent [b, t, kv_lora], k_rope [b, t, rope] (rotated)).
        Shared by the layer and the indexer losses that recompute its attention."""
        c = self.config
        nope = c.qk_nope_head_dim
        q_resid = self.q_a_layernorm(self.q_a_proj(x))
        q = self.q_b_proj(q_resid)  # [b, s, h, nope + rope]
        q_nope, q_rope = q[..., :nope], apply_interleaved_rope(q[..., nope:], cos, sin)
        q_nope = nn.with_logical_constraint(
            q_nope, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
        compressed = self.kv_a_proj_with_mqa(x)
        latent = self.kv_a_layernorm(compressed[..., : c.kv_lora_rank])  # [b, t, c]
        k_rope = apply_interleaved_rope(compressed[..., None, c.kv_lora_rank:], cos, sin)[:, :, 0]
        # Queries may be split over the sequence (context parallelism); every query shard
        # needs every key: the latent (kv_lora_rank + rope per token) is what gets gathered.
        latent, k_rope = (nn.with_logical_constraint(a, KEY_AXES) for a in (latent, k_rope))
        return q_resid, q_nope, q_rope, latent, k_rope

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: AttentionMask,
                 prev_topk: Optional[jax.Array]) -> tuple[jax.Array, jax.Array]:
        """x [b, s, d], mask (causal and same-document) -> (out [b, s, d], topk [b, s, k])."""
        c = self.config
        nope, rope = c.qk_nope_head_dim, c.qk_rope_head_dim
        q_resid, q_nope, q_rope, latent, k_rope = self.project(x, cos, sin)

        kv_len = x.shape[1]
        sparse = kv_len > c.index_topk
        if self.runs_indexer and self.is_initializing() and not sparse:
            self.indexer(x, q_resid, cos, sin, mask)  # create its parameters even at short init
        if sparse and self.runs_indexer:
            topk = self.indexer.topk(x, q_resid, cos, sin, mask, c.index_topk)
        elif sparse:
            if prev_topk is None:
                raise ValueError("a 'shared' indexer layer needs the top-k of a previous full layer")
            topk = prev_topk
        else:
            topk = prev_topk if prev_topk is not None else _all_keys_placeholder(x, c.index_topk)
        topk = jax.lax.stop_gradient(topk)

        impl = c.attention_impl if sparse else "masked_dense"
        kv_b = jnp.asarray(self.kv_b_proj.kernel, q_nope.dtype)
        if impl == "masked_dense":
            kv = self.kv_b_proj(latent)  # [b, t, h, nope + v]
            k = jnp.concatenate(
                [kv[..., :nope], jnp.broadcast_to(k_rope[:, :, None, :], kv.shape[:3] + (rope,))], axis=-1)
            full_q = jnp.concatenate([q_nope, q_rope], -1)
            if sparse:  # the reference form of sparse attention: a selection mask
                attend = mask.dense() & sa.selection_mask(topk, kv_len)
                out = sa.masked_dense_attention(full_q, k, kv[..., nope:], attend, c.attention_scale)
            else:  # dense stages: online softmax in blocks, memory linear in length
                out = blockwise_attention(full_q, k, kv[..., nope:], mask, c.attention_scale)
        else:
            # Absorbed form: score and mix in latent space, expand through W_uv once at the end.
            q_latent = jnp.einsum("bshn,chn->bshc", q_nope, kv_b[..., :nope])
            if impl == "gather":
                out_latent = sa.gathered_latent_attention(q_latent, q_rope, latent, k_rope, topk,
                                                          c.attention_scale)
            else:
                out_latent = _pallas_latent_attention(q_latent, q_rope, latent, k_rope, topk,
                                                      c.attention_scale)
            out = jnp.einsum("bshc,chv->bshv", out_latent, kv_b[..., nope:])
        out = nn.with_logical_constraint(
            out, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
        return self.o_proj(out), topk


def _all_keys_placeholder(x: jax.Array, index_topk: int) -> jax.Array:
    """Top-k carried through short-context layers, where every causal key is selected anyway."""
    b, s = x.shape[:2]
    return jnp.zeros((b, s, min(index_topk, s)), jnp.int32)


def _pallas_latent_attention(q_latent, q_rope, latent, k_rope, topk, scale):
    """The flash-style top-k kernel over one shared latent per token (kv_heads = 1)."""
    q = jnp.concatenate([q_latent, q_rope], axis=-1)
    k = jnp.concatenate([latent, k_rope], axis=-1)[:, :, None, :]
    return kernel_dispatch.sparse_latent_attention(q, k, latent[:, :, None, :], topk, scale)
