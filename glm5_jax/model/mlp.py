"""SwiGLU MLP: the dense layers, the shared expert, and the dense-baseline replacement."""

from __future__ import annotations

import jax
from flax import linen as nn

from glm5_jax.config import ModelConfig
from glm5_jax.model.linear import Projection, dtype_of


class MLP(nn.Module):
    config: ModelConfig
    width: int

    def setup(self) -> None:
        c = self.config
        dt, pdt, std = dtype_of(c.dtype), dtype_of(c.param_dtype), c.initializer_range
        self.gate_proj = Projection((c.hidden_size,), (self.width,), ("embed",), ("mlp",), std, dt, pdt)
        self.up_proj = Projection((c.hidden_size,), (self.width,), ("embed",), ("mlp",), std, dt, pdt)
        self.down_proj = Projection((self.width,), (c.hidden_size,), ("mlp",), ("embed",), std, dt, pdt)

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = nn.silu(self.gate_proj(x)) * self.up_proj(x)
        hidden = nn.with_logical_constraint(hidden, ("activation_batch", "activation_length", "activation_mlp"))
        return self.down_proj(hidden)
