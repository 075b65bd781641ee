"""Dropless mixture of experts: routed experts via grouped matmul plus a shared expert.

Every (token, slot) pair is a row; rows are sorted by expert so each expert multiplies one
contiguous block (``jax.lax.ragged_dot``; with ``moe_impl="pallas"`` the Pallas grouped matmul;
with ``moe_impl="blocked"`` padded blocks of rows, the CPU path at active cost: see
blocked_experts). Under a multi-device mesh the rows travel to their experts' devices and back
by all-to-all (expert_parallel.py).
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
from glm5_jax.model.expert_parallel import routed_experts_sharded, routed_experts_single
from glm5_jax.model.linear import dtype_of
from glm5_jax.model.mlp import MLP
from glm5_jax.model.router import Router


class RoutedExperts(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, weights: jax.Array, expert_ids: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
        """x [tokens, d], weights/expert_ids [tokens, k] -> ([tokens, d], rows per expert [E])."""
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
        wi_gate, wi_up, wo = (w.astype(dt) for w in (wi_gate, wi_up, wo))
        mesh = kernel_dispatch.active_mesh()
        if mesh is None:
            out = routed_experts_single(x.astype(dt), weights, expert_ids, wi_gate, wi_up, wo, c.moe_impl)
            load = jnp.bincount(expert_ids.reshape(-1), length=e + 1)[:-1]
        else:
            out, load = routed_experts_sharded(
                x.astype(dt), weights, expert_ids, wi_gate, wi_up, wo, mesh=mesh, impl=c.moe_impl,
                dispatch=c.expert_dispatch, capacity_factor=c.expert_capacity_factor)
        return out, load


class MoE(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        batch, seq, d = x.shape
        flat = x.reshape(batch * seq, d)
        weights, expert_ids, _ = Router(c, name="gate")(flat)
        routed, load = RoutedExperts(c, name="experts")(flat, weights, expert_ids)
        active = expert_ids < c.n_routed_experts
        self.sow("intermediates", "expert_load", load)
        self.sow("intermediates", "active_experts_per_token", jnp.mean(jnp.sum(active, axis=-1)))
        out = routed.reshape(batch, seq, d)
        if c.n_shared_experts:
            out = out + MLP(c, c.moe_intermediate_size * c.n_shared_experts, name="shared_experts")(x)
        return out
