"""The GLM-5 causal language model: embeddings, two scanned layer stacks, head, MTP modules.

``model.apply(variables, input_ids)`` maps int32 [batch, seq] to logits [batch, seq, vocab].
Packed sequences pass ``segment_ids`` (attention stays inside a document) and ``positions``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from glm5_jax.config import ModelConfig
from glm5_jax.model.attention_mask import attention_mask
from glm5_jax.model.decoder_layer import LayerStack, stack_layout
from glm5_jax.model.linear import Projection, dtype_of
from glm5_jax.model.mtp import MTPModule, shift_left
from glm5_jax.model.norms import RMSNorm
from glm5_jax.model.rope import rope_angles


class GLM5Model(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, positions: Optional[jax.Array] = None,
                 segment_ids: Optional[jax.Array] = None, *, return_mtp: bool = False,
                 return_hidden: bool = False):
        """Logits [b, s, vocab]; with ``return_mtp`` also MTP logits [steps, b, s, vocab].

        MTP step j's logits at position t predict token t + j + 1. With ``return_hidden`` the
        head is not applied: (final normed hidden [b, s, d], head kernel [d, vocab] in the
        compute dtype, MTP normed hiddens [steps, b, s, d] or None), so a loss can form the
        logits a chunk at a time (``losses.chunked_cross_entropy``).
        """
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        batch, seq = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
        embedding = self.param(
            "embed_tokens",
            nn.with_logical_partitioning(nn.initializers.normal(c.initializer_range), ("vocab", "embed")),
            (c.vocab_size, c.hidden_size), pdt,
        )

        def embed(tokens):
            return nn.with_logical_constraint(
                jnp.take(embedding, tokens, axis=0).astype(dt),
                ("activation_batch", "activation_length", "activation_embed"))

        cos, sin = rope_angles(c, positions)
        mask = attention_mask(seq, segment_ids, batch)
        x = embed(input_ids)
        topk = jnp.zeros((batch, seq, min(c.index_topk, seq)), jnp.int32)
        for name, first, count in stack_layout(c):
            mlp_type = c.mlp_layer_types[first]
            x, topk = LayerStack(c, mlp_type, c.indexer_types[first:first + count], name=name)(
                x, topk, cos, sin, mask)

        if c.tie_word_embeddings:
            head_kernel = embedding.T.astype(dt)
        else:
            lm_head = Projection((c.hidden_size,), (c.vocab_size,), ("embed",), ("vocab",),
                                 c.initializer_range, dt, pdt, name="lm_head")
            head_kernel = jnp.asarray(lm_head.kernel, dt)

        def head(h):
            return h.astype(dt) @ head_kernel

        normed = RMSNorm(c.rms_norm_eps, dt, pdt, name="norm")(x)
        with_mtp = c.num_mtp_layers and (return_mtp or self.is_initializing())
        if return_hidden and not with_mtp:
            return normed, head_kernel, None
        if not return_hidden:
            logits = nn.with_logical_constraint(
                head(normed), ("activation_batch", "activation_length", "activation_vocab"))
            if not with_mtp:
                return logits
        mtp_normed = []
        hidden = x
        for step in range(c.mtp_num_steps):
            module_index = 0 if c.mtp_share_parameters else step
            module = MTPModule(c, name=f"mtp_{module_index}") if step == 0 or not c.mtp_share_parameters else module
            hidden, step_normed = module(hidden, embed(shift_left(input_ids, step + 1)), cos, sin, mask)
            mtp_normed.append(step_normed)
        if return_hidden:
            return normed, head_kernel, jnp.stack(mtp_normed)
        if not return_mtp:
            return logits
        return logits, jnp.stack([head(h) for h in mtp_normed])
