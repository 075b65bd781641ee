"""Absorbed MLA attention in the latent space, over every key or over gathered selected keys.

With W_uk folded into the query (q_latent = q_nope W_uk) a score is q_latent . latent +
q_rope . rope_key, and the output stays a mix of latents until W_uv expands it once; so the
cache is read as stored, [tokens, kv_lora_rank + qk_rope_head_dim], never as per-head K/V.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def selected_latent_attention(q_latent: jax.Array, q_rope: jax.Array, latent_sel: jax.Array,
                              rope_sel: jax.Array, valid: jax.Array, scale: float) -> jax.Array:
    """Absorbed MLA over gathered keys: latent_sel [b, s, k, c], rope_sel [b, s, k, r], valid [b, s, k]."""
    logits = (jnp.einsum("bshc,bskc->bshk", q_latent, latent_sel)
              + jnp.einsum("bshr,bskr->bshk", q_rope, rope_sel)).astype(jnp.float32) * scale
    logits = jnp.where(valid[:, :, None, :], logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1).astype(latent_sel.dtype)
    return jnp.einsum("bshk,bskc->bshc", probs, latent_sel)


def latent_attention(q_latent: jax.Array, q_rope: jax.Array, latent: jax.Array, k_rope: jax.Array,
                     visible: jax.Array, scale: float) -> jax.Array:
    """Absorbed MLA over every key: q_latent [b, s, h, c], q_rope [b, s, h, r], latent [b, t, c],
    k_rope [b, t, r], visible [b, s, t] -> latent output [b, s, h, c]."""
    logits = (jnp.einsum("bshc,btc->bsht", q_latent, latent)
              + jnp.einsum("bshr,btr->bsht", q_rope, k_rope)).astype(jnp.float32) * scale
    logits = jnp.where(visible[:, :, None, :], logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1).astype(latent.dtype)
    return jnp.einsum("bsht,btc->bshc", probs, latent)
