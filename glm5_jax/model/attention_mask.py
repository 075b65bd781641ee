"""Causal, same-document attention described by segment ids, its [q, kv] blocks made on demand.

A boolean [b, s, s] matrix passed to every layer is O(s^2) per sequence (2 GiB for 8 rows of
16K) and makes every user of it O(s^2) too. ``AttentionMask`` carries only the segment ids
[b, s]; blockwise paths ask for the one [b, q_block, k_block] tile they work on
(``block``), the sampled-rows recall asks for its rows (``rows``), and reference paths and
the dense stages' indexer loss ask for the whole matrix (``dense``). Causality is by index
(query i sees keys j <= i), as packed rows are laid out.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


class AttentionMask(NamedTuple):
    segment_ids: jax.Array  # [b, s] int32; a single segment when the rows are not packed

    @property
    def kv_len(self) -> int:
        return self.segment_ids.shape[1]

    def block(self, q_start, q_len: int, k_start, k_len: int) -> jax.Array:
        """Boolean [b, q_len, k_len] for queries q_start.. and keys k_start.. (starts may be
        traced; lengths are static)."""
        seg_q = jax.lax.dynamic_slice_in_dim(self.segment_ids, q_start, q_len, axis=1)
        seg_k = jax.lax.dynamic_slice_in_dim(self.segment_ids, k_start, k_len, axis=1)
        q_pos = q_start + jnp.arange(q_len, dtype=jnp.int32)
        k_pos = k_start + jnp.arange(k_len, dtype=jnp.int32)
        return (k_pos[None, :] <= q_pos[:, None])[None] & (seg_q[:, :, None] == seg_k[:, None, :])

    def rows(self, query_positions: np.ndarray) -> jax.Array:
        """Boolean [b, len(query_positions), kv_len] for the given (static) queries."""
        positions = np.asarray(query_positions, np.int32)
        seg_q = self.segment_ids[:, positions]
        causal = np.arange(self.kv_len)[None, :] <= positions[:, None]
        return jnp.asarray(causal)[None] & (seg_q[:, :, None] == self.segment_ids[:, None, :])

    def dense(self) -> jax.Array:
        """The whole boolean [b, s, s]: for reference paths, O(s^2)."""
        return self.block(0, self.kv_len, 0, self.kv_len)


def attention_mask(seq_len: int, segment_ids: Optional[jax.Array], batch: int) -> AttentionMask:
    """Causal attention, within the same segment when segments are given."""
    if segment_ids is None:
        segment_ids = jnp.zeros((batch, seq_len), jnp.int32)
    return AttentionMask(jnp.asarray(segment_ids, jnp.int32))
