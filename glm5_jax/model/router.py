"""Sigmoid router with auxiliary-loss-free balancing and group-limited top-k.

Scores are sigmoid(x W). Expert *choice* uses scores + e_score_correction_bias (a per-expert
bias in its own ``routing`` collection, moved by the balancing rule, never by the optimizer);
the combine *weights* use the raw scores, normalised over the chosen experts and scaled by
routed_scaling_factor. With n_group > 1, only the topk_group groups whose two best experts
score highest are eligible.

``dynamic`` mode gives hard tokens more experts: the k_max best experts are ranked and a token
keeps experts until their normalised weight reaches router_score_threshold (at least k_min).
Shapes stay static: dropped slots get expert id ``n_routed_experts`` and weight 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from glm5_jax.config import ModelConfig
from glm5_jax.model.linear import dtype_of

ROUTING_COLLECTION = "routing"


def group_limited_choice_scores(scores_for_choice: jax.Array, n_group: int, topk_group: int) -> jax.Array:
    """Mask experts outside the best ``topk_group`` groups with -inf. [tokens, experts]."""
    tokens, experts = scores_for_choice.shape
    if n_group == 1:
        return scores_for_choice
    grouped = scores_for_choice.reshape(tokens, n_group, experts // n_group)
    group_scores = jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)  # [tokens, groups]
    _, best_groups = jax.lax.top_k(group_scores, topk_group)
    group_mask = jnp.any(best_groups[:, :, None] == jnp.arange(n_group)[None, None, :], axis=1)
    keep = jnp.repeat(group_mask, experts // n_group, axis=1)
    return jnp.where(keep, scores_for_choice, -jnp.inf)


def dynamic_keep_mask(sorted_weights: jax.Array, k_min: int, threshold: float) -> jax.Array:
    """Keep slot j if j < k_min or the normalised weight before it is below the threshold."""
    normalised = sorted_weights / (jnp.sum(sorted_weights, axis=-1, keepdims=True) + 1e-20)
    mass_before = jnp.cumsum(normalised, axis=-1) - normalised
    slot = jnp.arange(sorted_weights.shape[-1])
    return (slot < k_min) | (mass_before < threshold)


class Router(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [tokens, d] -> (weights [tokens, k], expert ids [tokens, k], scores [tokens, experts])."""
        c = self.config
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(c.initializer_range),
                                         ("embed", "router_expert")),
            (c.hidden_size, c.n_routed_experts), dtype_of(c.param_dtype),
        )
        bias = self.variable(ROUTING_COLLECTION, "e_score_correction_bias",
                             lambda: jnp.zeros((c.n_routed_experts,), jnp.float32)).value
        logits = x.astype(jnp.float32) @ kernel.astype(jnp.float32)
        scores = jax.nn.sigmoid(logits)
        choice = group_limited_choice_scores(scores + bias, c.n_group, c.topk_group)
        k = c.max_experts_per_tok
        if c.router_mode == "dynamic":
            # Rank by choice score (sorted), so slot order is "most wanted first".
            _, expert_ids = jax.lax.top_k(choice, k)
            weights = jnp.take_along_axis(scores, expert_ids, axis=-1)
            keep = dynamic_keep_mask(weights, c.router_k_min, c.router_score_threshold)
            weights = jnp.where(keep, weights, 0.0)
            expert_ids = jnp.where(keep, expert_ids, c.n_routed_experts)
        else:
            _, expert_ids = jax.lax.top_k(choice, k)
            weights = jnp.take_along_axis(scores, expert_ids, axis=-1)
        if c.norm_topk_prob:
            weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
        return weights * c.routed_scaling_factor, expert_ids.astype(jnp.int32), scores
