"""One pre-norm decoder layer (attention then MLP/MoE) and the scanned stacks built from it.

Layers are grouped into *blocks*: the shortest run of layers whose indexer pattern repeats
through the stack (one layer when every layer runs its own indexer, as in GLM-5). A stack scans
over identical blocks, so a 78-layer model compiles like a single block. The top-k selection of
the last full-indexer layer travels in the scan carry to the shared layers after it.
"""

from __future__ import annotations

from typing import Sequence

from flax import linen as nn

from glm5_jax.config import ModelConfig
from glm5_jax.model.attention import MLAttention
from glm5_jax.model.linear import dtype_of
from glm5_jax.model.mlp import MLP
from glm5_jax.model.moe import MoE
from glm5_jax.model.norms import RMSNorm
from glm5_jax.model.remat import rematerialised
from glm5_jax.model.router import ROUTING_COLLECTION

ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


class DecoderLayer(nn.Module):
    config: ModelConfig
    mlp_type: str  # "dense" | "sparse"
    indexer_type: str  # "full" | "shared"

    @nn.compact
    def __call__(self, x, cos, sin, mask, prev_topk):
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
        attn_out, topk = MLAttention(c, runs_indexer=self.indexer_type == "full", name="self_attn")(
            RMSNorm(c.rms_norm_eps, dt, pdt, name="input_layernorm")(x), cos, sin, mask, prev_topk)
        x = x + attn_out
        h = RMSNorm(c.rms_norm_eps, dt, pdt, name="post_attention_layernorm")(x)
        if self.mlp_type == "dense":
            mlp_out = MLP(c, c.intermediate_size, name="mlp")(h)
        elif c.moe_as_dense:
            mlp_out = MLP(c, c.dense_equivalent_width, name="mlp")(h)
        else:
            mlp_out = MoE(c, name="mlp")(h)
        return nn.with_logical_constraint(x + mlp_out, ACTIVATION_AXES), topk


class LayerBlock(nn.Module):
    """A fixed sequence of layers (the repeating unit of a stack), scanned as one step."""

    config: ModelConfig
    mlp_type: str
    indexer_types: Sequence[str]

    @nn.compact
    def __call__(self, carry, cos, sin, mask):
        x, topk = carry
        for i, indexer_type in enumerate(self.indexer_types):
            x, topk = DecoderLayer(self.config, self.mlp_type, indexer_type, name=f"layer_{i}")(
                x, cos, sin, mask, topk)
        return (x, topk), None


def block_period(pattern: Sequence[str]) -> int:
    """Smallest p dividing len(pattern) such that the pattern repeats with period p."""
    n = len(pattern)
    for p in range(1, n + 1):
        if n % p == 0 and all(pattern[i] == pattern[i % p] for i in range(n)):
            return p
    return n


class LayerStack(nn.Module):
    """Consecutive layers with one MLP type, scanned over repeats of their indexer pattern."""

    config: ModelConfig
    mlp_type: str
    indexer_types: Sequence[str]

    @nn.compact
    def __call__(self, x, topk, cos, sin, mask):
        period = block_period(self.indexer_types)
        repeats = len(self.indexer_types) // period
        scanned = nn.scan(
            rematerialised(LayerBlock, self.config.remat_policy),
            variable_axes={"params": 0, ROUTING_COLLECTION: 0, "intermediates": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
            length=repeats,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        (x, topk), _ = scanned(self.config, self.mlp_type, tuple(self.indexer_types[:period]),
                               name="block")((x, topk), cos, sin, mask)
        return x, topk


def stack_layout(config: ModelConfig) -> list[tuple[str, int, int]]:
    """[(stack name, first layer, number of layers)] for the dense prefix and the MoE stack."""
    layout = []
    if config.num_dense_layers:
        layout.append(("dense_layers", 0, config.num_dense_layers))
    if config.num_moe_layers:
        layout.append(("moe_layers", config.num_dense_layers, config.num_moe_layers))
    return layout


def layer_location(config: ModelConfig, layer: int) -> tuple[str, int, str]:
    """Where HF layer ``layer`` lives: (stack name, scan index, block-local name)."""
    for name, first, count in stack_layout(config):
        if first <= layer < first + count:
            period = block_period(config.indexer_types[first:first + count])
            local = layer - first
            return name, local // period, f"layer_{local % period}"
    raise IndexError(f"layer {layer} is outside 0..{config.num_hidden_layers - 1}")
