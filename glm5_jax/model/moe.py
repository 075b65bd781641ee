"""Dropless mixture of experts: routed experts via grouped matmul plus a shared expert.

Every (token, slot) pair is a row; rows are sorted by expert so each expert multiplies one
contiguous block (``jax.lax.ragged_dot``; with ``moe_impl="pallas"`` the Pallas grouped matmul,
expert-parallel under a mesh: see kernel_dispatch.routed_experts; with ``moe_impl="blocked"``
padded blocks of rows, the CPU path at active cost: see blocked_experts).
Rows whose expert id is ``n_routed_experts`` (slots dropped by dynamic routing) sort last, lie
beyond sum(group_sizes) and produce zeros. Per-expert load and active experts per token are
sown into ``intermediates`` for the balancing rule and compute accounting.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from glm5_jax.config import ModelConfig
from glm5_jax.model import kernel_dispatch
from glm5_jax.model.blocked_experts import block_layout
from glm5_jax.model.linear import dtype_of
from glm5_jax.model.mlp import MLP
from glm5_jax.model.router import Router


class RoutedExperts(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, weights: jax.Array, expert_ids: jax.Array) -> jax.Array:
        """x [tokens, d], weights/expert_ids [tokens, k] -> [tokens, d]."""
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        init = nn.initializers.normal(c.initializer_range)
        e, d, f = c.n_routed_experts, c.hidden_size, c.moe_intermediate_size
        wi_gate = self.param("wi_gate", nn.with_logical_partitioning(init, ("expert", "expert_embed", "expert_mlp")),
                             (e, d, f), pdt)
        wi_up = self.param("wi_up", nn.with_logical_partitioning(init, ("expert", "expert_embed", "expert_mlp")),
                           (e, d, f), pdt)
        wo = self.param("wo", nn.with_logical_partitioning(init, ("expert", "expert_mlp", "expert_embed")),
                        (e, f, d), pdt)
        if c.moe_impl == "pallas":
            return kernel_dispatch.routed_experts(x.astype(dt), weights, expert_ids, wi_gate.astype(dt),
                                                  wi_up.astype(dt), wo.astype(dt), e)
        tokens, k = expert_ids.shape
        flat_ids = expert_ids.reshape(-1)
        order = jnp.argsort(flat_ids, stable=True)
        rows = x[order // k].astype(dt)  # [tokens * k, d], grouped by expert
        group_sizes = jnp.bincount(flat_ids, length=e).astype(jnp.int32)
        if c.moe_impl == "blocked":
            layout = block_layout(group_sizes, rows.shape[0])
            blocks = layout.to_blocks(rows)
            gate = layout.matmul(blocks, wi_gate.astype(dt))
            up = layout.matmul(blocks, wi_up.astype(dt))
            out_rows = layout.from_blocks(layout.matmul(nn.silu(gate) * up, wo.astype(dt)))
        else:
            gate = jax.lax.ragged_dot(rows, wi_gate.astype(dt), group_sizes)
            up = jax.lax.ragged_dot(rows, wi_up.astype(dt), group_sizes)
            out_rows = jax.lax.ragged_dot(nn.silu(gate) * up, wo.astype(dt), group_sizes)
        unsorted = jnp.zeros_like(out_rows).at[order].set(out_rows).reshape(tokens, k, d)
        return jnp.einsum("tkd,tk->td", unsorted, weights.astype(dt))


class MoE(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        batch, seq, d = x.shape
        flat = x.reshape(batch * seq, d)
        weights, expert_ids, _ = Router(c, name="gate")(flat)
        routed = RoutedExperts(c, name="experts")(flat, weights, expert_ids)
        active = expert_ids < c.n_routed_experts
        self.sow("intermediates", "expert_load",
                 jnp.bincount(expert_ids.reshape(-1), length=c.n_routed_experts + 1)[:-1])
        self.sow("intermediates", "active_experts_per_token", jnp.mean(jnp.sum(active, axis=-1)))
        out = routed.reshape(batch, seq, d)
        if c.n_shared_experts:
            out = out + MLP(c, c.moe_intermediate_size * c.n_shared_experts, name="shared_experts")(x)
        return out
