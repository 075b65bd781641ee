"""The decode cache: per layer exactly what GLM-5 stores, in fixed-capacity arrays.

Per token and layer the cache holds the normalised MLA latent (``kv_lora_rank``), the rotated
shared rope key (``qk_rope_head_dim``) and, for layers that run their own indexer, the DSA
indexer key (``index_head_dim``). Per-head keys and values are never formed: attention reads the
latent in absorbed form. Shared-indexer layers store no indexer key (they reuse a selection).

Layout mirrors the parameter tree so the cache scans with the layer stacks::

    {"dense_layers": {"layer_0": {"latent": [repeats, batch, capacity, kv_lora_rank], ...}},
     "moe_layers": {...},
     "mtp": {"latent": [1, batch, capacity, kv_lora_rank], ...}}      # only with MTP drafting

Slot ``j`` of a row holds that sequence's token at position ``j`` (sequences are right-padded),
so a key is visible to a query exactly when ``slot <= query position``; slots past a sequence's
length hold stale values that no query can see before they are overwritten.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from glm5_jax.config import ModelConfig
from glm5_jax.model.decoder_layer import block_period, stack_layout

LATENT = "latent"
ROPE_KEY = "rope_key"
INDEX_KEY = "index_key"
MTP = "mtp"

Cache = dict  # nested dict of arrays, layout above
CACHE_AXES = ("activation_batch", "activation_length", "activation_kv")  # per layer: [b, T, w]


def layer_widths(config: ModelConfig, runs_indexer: bool) -> dict[str, int]:
    """Per-token widths of one layer's cache entries."""
    widths = {LATENT: config.kv_lora_rank, ROPE_KEY: config.qk_rope_head_dim}
    if runs_indexer:
        widths[INDEX_KEY] = config.index_head_dim
    return widths


def init_cache(config: ModelConfig, batch: int, capacity: int, with_mtp: bool = False) -> Cache:
    """Zeros for ``batch`` sequences of up to ``capacity`` positions, in the activation dtype."""
    dtype = jnp.dtype(config.dtype)
    cache: Cache = {}
    for name, first, count in stack_layout(config):
        pattern = config.indexer_types[first:first + count]
        period = block_period(pattern)
        repeats = count // period
        cache[name] = {
            f"layer_{i}": {key: jnp.zeros((repeats, batch, capacity, width), dtype)
                           for key, width in layer_widths(config, pattern[i] == "full").items()}
            for i in range(period)
        }
    if with_mtp:
        cache[MTP] = {key: jnp.zeros((1, batch, capacity, width), dtype)
                      for key, width in layer_widths(config, True).items()}
    return cache


def write_layer_rows(cache: jax.Array, rows: jax.Array, layer: jax.Array, start: jax.Array,
                     fresh: bool) -> jax.Array:
    """cache [R, b, T, w] with rows [b, s, w] at (layer, i, start_i + j); a scatter the compiler
    applies in place to the loop-carried buffer. ``fresh``: every row starts at slot 0."""
    rows = nn.with_logical_constraint(rows.astype(cache.dtype), CACHE_AXES)
    if fresh:
        cache = jax.lax.dynamic_update_slice(cache, rows[None], (layer, 0, 0, 0))
    else:
        b, s = rows.shape[:2]
        slots = start[:, None] + jnp.arange(s, dtype=jnp.int32)[None, :]  # [b, s]
        batch = jnp.broadcast_to(jnp.arange(b)[:, None], (b, s))
        cache = cache.at[layer, batch, slots].set(rows, mode="promise_in_bounds")
    return nn.with_logical_constraint(cache, (None,) + CACHE_AXES)


def gather_layer_rows(cache: jax.Array, layer: jax.Array, topk: jax.Array) -> jax.Array:
    """cache [R, b, T, w], topk [b, s, k] -> [b, s, k, w] (NO_KEY slots read slot 0)."""
    b = topk.shape[0]
    batch = jnp.arange(b)[:, None, None]
    return cache[layer, batch, jnp.maximum(topk, 0)]


def cache_bytes_per_token(config: ModelConfig, bytes_per_value: int | None = None) -> int:
    """Bytes one token occupies in this cache, summed over the main model's layers."""
    width = 0
    for kind in config.indexer_types:
        width += sum(layer_widths(config, kind == "full").values())
    return width * (bytes_per_value or jnp.dtype(config.dtype).itemsize)


def full_kv_bytes_per_token(config: ModelConfig, bytes_per_value: int | None = None) -> int:
    """Bytes per token of a conventional cache of expanded per-head keys and values."""
    per_layer = config.num_key_value_heads * (config.qk_head_dim + config.v_head_dim)
    return config.num_hidden_layers * per_layer * (bytes_per_value or jnp.dtype(config.dtype).itemsize)


def cache_nbytes(cache: Cache) -> int:
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(cache)))
