"""Policy-gradient objectives with off-policy correction against the rollout log-probs.

The learner trains on tokens that some older policy (the *rollout* or *behaviour* policy,
recorded token by token when it sampled them) produced. Three corrections are offered:

* ``direct_double_sided`` (the GLM-5 paper): the token ratio r = pi_theta / pi_rollout is
  used directly as the importance weight, and tokens with r outside
  [1 - eps_low, 1 + eps_high] are *masked* (contribute nothing), not clipped: a clipped
  token still pushes with a capped weight, a masked one is treated as too off-policy to trust.
* ``decoupled`` (AReaL, arXiv:2505.24298): PPO's clipped surrogate around a *proximal* policy
  (the learner's weights before the first of this batch's minibatch updates), times the
  stop-gradient behaviour weight pi_prox / pi_rollout, optionally capped.
* ``truncated_is`` (Yao et al., "Your efficient RL framework secretly brings you off-policy
  RL training"): vanilla policy gradient weighted by the stop-gradient min(r, cap).

Every function takes per-token arrays of one shape ([batch, seq]) and a ``loss_mask`` that
is 1 on the policy's own tokens and 0 on prompt, environment-feedback and padding tokens, so
feedback tokens never enter the loss. The loss is the sum over tokens divided by the number
of policy tokens in the batch (a token-level mean), so long answers are not down-weighted.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from glm5_jax.train.losses import masked_mean  # the mean over loss-mask tokens

OBJECTIVES = ("direct_double_sided", "decoupled", "truncated_is")


class ObjectiveOutput(NamedTuple):
    loss: jax.Array  # scalar
    kept_fraction: jax.Array  # share of policy tokens that carry gradient (not IS-masked/clipped)
    mean_ratio: jax.Array  # mean pi_theta / pi_rollout over policy tokens


def rollout_ratio(logprobs: jax.Array, rollout_logprobs: jax.Array) -> jax.Array:
    """pi_theta / pi_rollout per token; differentiable in ``logprobs`` only."""
    return jnp.exp(logprobs - jax.lax.stop_gradient(rollout_logprobs))


def double_sided_mask(ratio: jax.Array, eps_low: float, eps_high: float) -> jax.Array:
    """True where 1 - eps_low <= ratio <= 1 + eps_high (the token is trusted)."""
    ratio = jax.lax.stop_gradient(ratio)
    return (ratio >= 1.0 - eps_low) & (ratio <= 1.0 + eps_high)


def direct_double_sided_loss(logprobs: jax.Array, rollout_logprobs: jax.Array,
                             advantages: jax.Array, loss_mask: jax.Array, eps_low: float,
                             eps_high: float) -> ObjectiveOutput:
    """-mean(mask * r * A): the gradient of a kept token is r * A * grad log pi_theta."""
    ratio = rollout_ratio(logprobs, rollout_logprobs)
    keep = double_sided_mask(ratio, eps_low, eps_high) & (loss_mask > 0)
    per_token = jnp.where(keep, -ratio * advantages, 0.0)
    return ObjectiveOutput(masked_mean(per_token, loss_mask), masked_mean(keep, loss_mask),
                           masked_mean(jax.lax.stop_gradient(ratio), loss_mask))


def decoupled_loss(logprobs: jax.Array, proximal_logprobs: jax.Array,
                   rollout_logprobs: jax.Array, advantages: jax.Array, loss_mask: jax.Array,
                   clip_eps: float, behaviour_weight_cap: float = 0.0) -> ObjectiveOutput:
    """AReaL's decoupled PPO: w * min(r_prox * A, clip(r_prox) * A), w = pi_prox / pi_rollout.

    ``behaviour_weight_cap`` > 0 truncates w from above (0 leaves it uncapped).
    """
    proximal = jax.lax.stop_gradient(proximal_logprobs)
    ratio = jnp.exp(logprobs - proximal)
    weight = jnp.exp(proximal - jax.lax.stop_gradient(rollout_logprobs))
    if behaviour_weight_cap > 0:
        weight = jnp.minimum(weight, behaviour_weight_cap)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    per_token = -weight * jnp.minimum(unclipped, clipped)
    # A token carries gradient unless the clipped branch won (that branch is constant in theta).
    live = (unclipped <= clipped) | ((ratio >= 1.0 - clip_eps) & (ratio <= 1.0 + clip_eps))
    return ObjectiveOutput(masked_mean(per_token, loss_mask), masked_mean(live, loss_mask),
                           masked_mean(jax.lax.stop_gradient(ratio * weight), loss_mask))


def truncated_is_loss(logprobs: jax.Array, rollout_logprobs: jax.Array, advantages: jax.Array,
                      loss_mask: jax.Array, cap: float) -> ObjectiveOutput:
    """-mean(sg(min(r, cap)) * A * log pi_theta): every token pushes, its weight capped."""
    ratio = jax.lax.stop_gradient(rollout_ratio(logprobs, rollout_logprobs))
    weight = jnp.minimum(ratio, cap)
    per_token = -weight * advantages * logprobs
    kept = jnp.ones_like(ratio, dtype=bool)
    return ObjectiveOutput(masked_mean(per_token, loss_mask), masked_mean(kept, loss_mask),
                           masked_mean(ratio, loss_mask))


def reference_kl(logprobs: jax.Array, reference_logprobs: jax.Array,
                 loss_mask: jax.Array) -> jax.Array:
    """Token-mean k3 estimate of KL(pi_theta || pi_ref): exp(d) - d - 1 with d = ref - theta.

    Non-negative and unbiased for samples from pi_theta (Schulman's "Approximating KL").
    """
    delta = jax.lax.stop_gradient(reference_logprobs) - logprobs
    return masked_mean(jnp.exp(delta) - delta - 1.0, loss_mask)


def policy_objective(name: str, logprobs: jax.Array, rollout_logprobs: jax.Array,
                     advantages: jax.Array, loss_mask: jax.Array, *, eps_low: float = 0.2,
                     eps_high: float = 0.28, proximal_logprobs: jax.Array | None = None,
                     clip_eps: float = 0.2, behaviour_weight_cap: float = 0.0,
                     truncation_cap: float = 2.0) -> ObjectiveOutput:
    """Dispatch on the config's objective name (a static string)."""
    if name == "direct_double_sided":
        return direct_double_sided_loss(logprobs, rollout_logprobs, advantages, loss_mask,
                                        eps_low, eps_high)
    if name == "decoupled":
        if proximal_logprobs is None:
            raise ValueError("objective 'decoupled' needs proximal_logprobs (the learner's "
                             "log-probs before the batch's first update)")
        return decoupled_loss(logprobs, proximal_logprobs, rollout_logprobs, advantages,
                              loss_mask, clip_eps, behaviour_weight_cap)
    if name == "truncated_is":
        return truncated_is_loss(logprobs, rollout_logprobs, advantages, loss_mask,
                                 truncation_cap)
    raise ValueError(f"objective={name!r} is unknown; allowed: {list(OBJECTIVES)}")
