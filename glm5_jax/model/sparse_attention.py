"""Attention restricted to each query's selected keys, in the forms the model can run.

* ``masked_dense_attention``: expand the MLA latent into per-head keys/values and attend with a
  [q, kv] mask: the reference semantics, cost O(q_len * kv_len).
* ``gathered_latent_attention``: gather each query's k selected latents and attend in the
  absorbed (latent) space, cost O(q_len * k): nothing of size q_len * kv_len is formed.
* ``pallas`` (selected in the attention module): the flash-style kernel over the same latents.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glm5_jax.model.indexer import NO_KEY


def selection_mask(topk_indices: jax.Array, kv_len: int) -> jax.Array:
    """Boolean [b, s, kv_len]: True at every selected position (NO_KEY slots select nothing).

    A scatter, O(s * (k + kv_len)) memory: comparing every slot with every position would
    form [b, s, k, kv_len] (128 GiB per 4K sequence at GLM-5's k = 2048)."""
    safe = jnp.where(topk_indices < 0, kv_len, topk_indices)  # NO_KEY -> a spill column

    def one_query(indices):
        return jnp.zeros((kv_len + 1,), bool).at[indices].set(True)

    return jax.vmap(jax.vmap(one_query))(safe)[..., :kv_len]


def masked_dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                           scale: float) -> jax.Array:
    """q [b, s, h, dqk], k [b, t, h, dqk], v [b, t, h, dv], mask [b, s, t] -> [b, s, h, dv]."""
    logits = jnp.einsum("bshd,bthd->bhst", q, k).astype(jnp.float32) * scale
    logits = jnp.where(mask[:, None, :, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhst,bthd->bshd", probs, v)


def gather_keys(values: jax.Array, topk_indices: jax.Array) -> jax.Array:
    """values [b, t, d] gathered per query -> [b, s, k, d]; NO_KEY slots read position 0."""
    safe = jnp.maximum(topk_indices, 0)
    return jax.vmap(lambda v, idx: v[idx])(values, safe)


def gathered_latent_attention(q_latent: jax.Array, q_rope: jax.Array, latent: jax.Array,
                              k_rope: jax.Array, topk_indices: jax.Array, scale: float,
                              query_chunk: int = 512) -> jax.Array:
    """Absorbed MLA over gathered keys.

    q_latent [b, s, h, c] (q_nope already projected by W_uk), q_rope [b, s, h, r],
    latent [b, t, c], k_rope [b, t, r], topk_indices [b, s, k] -> latent output [b, s, h, c].
    Gathered keys take s * k * (c + r) values, so long inputs are processed ``query_chunk``
    queries at a time (rematerialised in the backward pass): memory stays at one chunk's.
    """
    def chunk_fn(args):
        q_latent_c, q_rope_c, topk_c = args
        return _gathered_chunk(q_latent_c, q_rope_c, latent, k_rope, topk_c, scale)

    return map_query_chunks(chunk_fn, (q_latent, q_rope, topk_indices), query_chunk)


def map_query_chunks(fn, pieces: tuple[jax.Array, ...], query_chunk: int) -> jax.Array:
    """``fn(pieces)`` for arrays [b, s, ...], ``query_chunk`` queries at a time (``lax.map``,
    each chunk rematerialised in the backward pass): memory of one chunk's intermediates.
    The output is [b, s, ...]. Rows no longer than a chunk (or not a multiple) run whole.

    ``fn`` must treat queries independently (it sees a chunk's queries, not their places).
    With the sequence split over the mesh's ``context`` axis, step i takes chunk i of
    *every* context shard ([b, shards * chunk]): each device works on its own queries and
    nothing moves. (Chunks of the unsplit sequence would make the loop index a sharded
    dimension: XLA then all-gathers the whole [n, b, chunk, ...] stack at every step, which
    was ~700 TB per step per chip for glm5_full at 128K.)
    """
    b, s = pieces[0].shape[:2]
    shards = _context_shards(s)
    local = s // shards
    if local <= query_chunk or local % query_chunk:
        return fn(pieces)
    n = local // query_chunk

    def split(x):  # [b, s, ...] -> [n, b, shards * chunk, ...]
        x = jnp.moveaxis(x.reshape(b, shards, n, query_chunk, *x.shape[2:]), 2, 0)
        return x.reshape(n, b, shards * query_chunk, *x.shape[4:])

    out = jax.lax.map(jax.checkpoint(fn), tuple(map(split, pieces)))
    out = jnp.moveaxis(out.reshape(n, b, shards, query_chunk, *out.shape[3:]), 0, 2)
    return out.reshape((b, s) + out.shape[4:])


def _context_shards(seq_len: int) -> int:
    """How many ways the active mesh splits the sequence (1 without a mesh or if it does not
    divide ``seq_len``)."""
    mesh = jax.sharding.get_abstract_mesh()
    shards = 1 if mesh.empty else dict(mesh.shape).get("context", 1)
    return shards if seq_len % shards == 0 else 1


def _gathered_chunk(q_latent, q_rope, latent, k_rope, topk_indices, scale):
    latent_sel = gather_keys(latent, topk_indices)  # [b, s, k, c]
    rope_sel = gather_keys(k_rope, topk_indices)  # [b, s, k, r]
    # Slot-major logits [b, s, k, h]: this layout is ~2-6x faster on XLA CPU than [b, s, h, k].
    logits = (jnp.einsum("bskc,bshc->bskh", latent_sel, q_latent)
              + jnp.einsum("bskr,bshr->bskh", rope_sel, q_rope)).astype(jnp.float32) * scale
    valid = (topk_indices != NO_KEY)[:, :, :, None]
    logits = jnp.where(valid, logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-2)
    probs = jnp.where(valid, probs, 0.0).astype(latent.dtype)
    return jnp.einsum("bskh,bskc->bshc", probs, latent_sel)
