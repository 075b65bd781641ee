"""Decoder layers and scanned stacks that read and write the latent cache.

The parameter tree is GLM5Model's (``{dense_layers,moe_layers}/block/layer_{i}/...`` with a
leading scan axis), so variables from training or ``load_hf`` apply unchanged. Each stack scans
over its repeated blocks; the whole stacked cache travels in the carry beside the activations
and the running top-k selection, and each block indexes its own layer. Carrying (rather than
scanning over slices, which copies them out and back) lets every write be an in-place scatter
and every read a gather of the selected rows, so decode cost does not grow with capacity.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from glm5_jax.config import ModelConfig
from glm5_jax.model.decoder_layer import ACTIVATION_AXES, block_period
from glm5_jax.model.linear import dtype_of
from glm5_jax.model.mlp import MLP
from glm5_jax.model.moe import MoE
from glm5_jax.model.norms import RMSNorm
from glm5_jax.model.router import ROUTING_COLLECTION
from glm5_jax.sample.cached_attention import CachedMLAttention


class CachedDecoderLayer(nn.Module):
    config: ModelConfig
    mlp_type: str  # "dense" | "sparse"
    indexer_type: str  # "full" | "shared"
    fresh: bool = False
    indexer_mode: str = "auto"

    @nn.compact
    def __call__(self, x, cos, sin, positions, cache, layer, prev_topk):
        """x [b, s, d] -> (x [b, s, d], topk [b, s, k], cache) (one pre-norm layer, as DecoderLayer).

        cache: this block-local layer's stacked arrays [R, b, T, w]; layer: the index into R."""
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
        attention = CachedMLAttention(c, runs_indexer=self.indexer_type == "full", fresh=self.fresh,
                                      indexer_mode=self.indexer_mode, name="self_attn")
        attn_out, topk, cache = attention(RMSNorm(c.rms_norm_eps, dt, pdt, name="input_layernorm")(x),
                                          cos, sin, positions, cache, layer, prev_topk)
        x = x + attn_out
        h = RMSNorm(c.rms_norm_eps, dt, pdt, name="post_attention_layernorm")(x)
        if self.mlp_type == "dense":
            mlp_out = MLP(c, c.intermediate_size, name="mlp")(h)
        elif c.moe_as_dense:
            mlp_out = MLP(c, c.dense_equivalent_width, name="mlp")(h)
        else:
            mlp_out = MoE(c, name="mlp")(h)
        return nn.with_logical_constraint(x + mlp_out, ACTIVATION_AXES), topk, cache


class CachedLayerBlock(nn.Module):
    config: ModelConfig
    mlp_type: str
    indexer_types: Sequence[str]
    fresh: bool = False
    indexer_mode: str = "auto"

    @nn.compact
    def __call__(self, carry, layer, cos, sin, positions):
        x, topk, cache = carry
        cache = dict(cache)
        for i, indexer_type in enumerate(self.indexer_types):
            name = f"layer_{i}"
            x, topk, cache[name] = CachedDecoderLayer(
                self.config, self.mlp_type, indexer_type, self.fresh, self.indexer_mode, name=name)(
                    x, cos, sin, positions, cache[name], layer, topk)
        return (x, topk, cache), None


class CachedLayerStack(nn.Module):
    config: ModelConfig
    mlp_type: str
    indexer_types: Sequence[str]
    fresh: bool = False
    indexer_mode: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, topk: jax.Array, cache: dict, cos: jax.Array, sin: jax.Array,
                 positions: jax.Array):
        period = block_period(self.indexer_types)
        repeats = len(self.indexer_types) // period
        scanned = nn.scan(
            CachedLayerBlock,
            variable_axes={"params": 0, ROUTING_COLLECTION: 0},
            split_rngs={"params": False},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
            length=repeats,
        )
        (x, topk, cache), _ = scanned(self.config, self.mlp_type, tuple(self.indexer_types[:period]),
                                      self.fresh, self.indexer_mode, name="block")(
                                          (x, topk, cache), jnp.arange(repeats, dtype=jnp.int32), cos, sin,
                                          positions)
        return x, topk, cache
