"""Multi-token prediction: extra heads that predict tokens t+2, t+3, ... for training and drafts.

Step j (1-based) combines the previous step's hidden state (the main model's for j = 1) with the
embedding of token t+j: h_j = Layer(eh_proj([enorm(emb(x_{t+j})); hnorm(h_{j-1})])), and predicts
token t+j+1 through the shared output head after its own norm. GLM-5 shares one module across
its 3 steps (``mtp_share_parameters``); otherwise each step has its own module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from glm5_jax.config import ModelConfig
from glm5_jax.model.decoder_layer import DecoderLayer
from glm5_jax.model.linear import Projection, dtype_of
from glm5_jax.model.norms import RMSNorm


class MTPModule(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, hidden, next_embeddings, cos, sin, mask):
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        joined = jnp.concatenate([RMSNorm(c.rms_norm_eps, dt, pdt, name="enorm")(next_embeddings),
                                  RMSNorm(c.rms_norm_eps, dt, pdt, name="hnorm")(hidden)], axis=-1)
        h = Projection((2 * c.hidden_size,), (c.hidden_size,), ("embed_pair",), ("embed",),
                       c.initializer_range, dt, pdt, name="eh_proj")(joined)
        mlp_type = "sparse" if c.num_moe_layers else "dense"
        h, _ = DecoderLayer(c, mlp_type, "full", name="layer")(h, cos, sin, mask, None)
        return h, RMSNorm(c.rms_norm_eps, dt, pdt, name="head_norm")(h)


def shift_left(tokens: jax.Array, amount: int, fill: int = 0) -> jax.Array:
    """tokens[:, t + amount] at position t, ``fill`` past the end. [batch, seq]."""
    return jnp.concatenate([tokens[:, amount:], jnp.full_like(tokens[:, :amount], fill)], axis=1)
