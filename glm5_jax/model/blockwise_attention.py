"""Dense attention in blocks (online softmax, as flash attention), memory linear in length.

``masked_dense_attention`` forms float32 logits [b, h, s, t]: 4 GiB per 4K sequence at
GLM-5's 64 heads, and the backward keeps them. Here queries go ``query_block`` at a time
(``lax.map``, rematerialised: the backward recomputes one block's work), and within a block
keys go ``key_block`` at a time through a running max / sum / weighted value (a scan whose
step is rematerialised too). Peak memory: one [b, h, query_block, key_block] tile plus the
running sums; the backward holds one query block's per-key-block carries. Work is the same
as the dense form (masked tiles are computed, not skipped): the portable path for CPU and
the planner; on TPU/GPU a fused kernel (splash attention, cuDNN) is the faster one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glm5_jax.model.attention_mask import AttentionMask
from glm5_jax.model.sparse_attention import masked_dense_attention

QUERY_BLOCK = 512
KEY_BLOCK = 512


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, scale: float,
                        query_block: int = QUERY_BLOCK, key_block: int = KEY_BLOCK) -> jax.Array:
    """Same result as ``masked_dense_attention`` with ``mask.dense()`` (every row must allow
    at least one key, as a causal mask does). q [b, s, h, d], k [b, t, h, d], v [b, t, h, dv].
    Each step builds its own [b, query_block, key_block] tile of the mask from segment ids."""
    b, s, h, _ = q.shape
    t = k.shape[1]
    if (s <= query_block and t <= key_block) or s % min(s, query_block) or t % min(t, key_block):
        return masked_dense_attention(q, k, v, mask.dense(), scale)
    query_block, key_block = min(s, query_block), min(t, key_block)
    key_blocks = t // key_block
    k_blocks = jnp.moveaxis(k.reshape(b, key_blocks, key_block, *k.shape[2:]), 1, 0)
    v_blocks = jnp.moveaxis(v.reshape(b, key_blocks, key_block, *v.shape[2:]), 1, 0)
    k_starts = jnp.arange(key_blocks, dtype=jnp.int32) * key_block
    lowest = jnp.finfo(jnp.float32).min

    @jax.checkpoint
    def query_step(block):
        q_blk, q_start = block  # [b, sq, h, d], its first query's index
        sq = q_blk.shape[1]

        @jax.checkpoint
        def key_step(carry, key_block_inputs):
            running_max, running_sum, acc = carry  # [b, h, sq], [b, h, sq], [b, sq, h, dv]
            k_start, k_kb, v_kb = key_block_inputs
            mask_kb = mask.block(q_start, sq, k_start, key_block)
            logits = jnp.einsum("bshd,bthd->bhst", q_blk, k_kb).astype(jnp.float32) * scale
            logits = jnp.where(mask_kb[:, None], logits, lowest)
            new_max = jnp.maximum(running_max, jnp.max(logits, axis=-1))
            probs = jnp.exp(logits - new_max[..., None])
            correction = jnp.exp(running_max - new_max)
            running_sum = running_sum * correction + jnp.sum(probs, axis=-1)
            acc = (acc * jnp.moveaxis(correction, 1, 2)[..., None]
                   + jnp.einsum("bhst,bthd->bshd", probs.astype(v_kb.dtype), v_kb).astype(jnp.float32))
            return (new_max, running_sum, acc), None

        init = (jnp.full((b, h, sq), lowest, jnp.float32), jnp.zeros((b, h, sq), jnp.float32),
                jnp.zeros((b, sq, h, v.shape[-1]), jnp.float32))
        (_, running_sum, acc), _ = jax.lax.scan(key_step, init, (k_starts, k_blocks, v_blocks))
        return (acc / jnp.moveaxis(running_sum, 1, 2)[..., None]).astype(v.dtype)

    query_blocks = s // query_block
    q_split = jnp.moveaxis(q.reshape(b, query_blocks, query_block, *q.shape[2:]), 1, 0)
    q_starts = jnp.arange(query_blocks, dtype=jnp.int32) * query_block
    out = jax.lax.map(query_step, (q_split, q_starts))
    return jnp.moveaxis(out, 0, 1).reshape(b, s, h, v.shape[-1])
