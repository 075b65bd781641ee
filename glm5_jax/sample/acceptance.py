"""Verifying drafted tokens so the output distribution is exactly the main model's policy.

Given D drafts d_1..d_D (drawn from the drafter's policy q) and the main model's logits at the
D + 1 verified positions (p_0 predicts d_1, ..., p_D follows d_D), the standard speculative
sampling rule (Leviathan et al., 2023; Chen et al., 2023) accepts d_j with probability
min(1, p(d_j) / q(d_j)); at the first rejection it draws a replacement from
normalise(max(p - q, 0)), and when all D are accepted it draws a bonus token from p_D. Every
emitted token is then distributed exactly as under p alone. Greedy is the point-mass case:
accept while d_j equals argmax p_{j-1}, then emit argmax of the first disagreeing position.

Each step emits a + 1 tokens (a = accepted drafts): the "accepted length" a + 1 is what the
GLM-5 report quotes (2.76 at 4 draft steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glm5_jax.sample.sampling import Policy, PolicyKind, policy_logits


def leading_true(flags: jax.Array) -> jax.Array:
    """Number of leading True values along the last axis. [b, D] -> [b] int32."""
    return jnp.sum(jnp.cumprod(flags.astype(jnp.int32), axis=-1), axis=-1).astype(jnp.int32)


def verify_drafts(target_logits: jax.Array, draft_logits: jax.Array, drafts: jax.Array, policy: Policy,
                  kind: PolicyKind, keys: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """target_logits [b, D+1, V], draft_logits [b, D, V], drafts [b, D] int32, keys [b]
    -> (accepted a [b], emitted tokens [b, D+1], their log-probabilities under the policy [b, D+1]).

    Row i emits tokens[i, :a_i + 1]: the a_i accepted drafts then one token from the main model;
    entries past a_i are filler.
    """
    d_plus_1 = target_logits.shape[1]
    log_p = jax.nn.log_softmax(policy_logits(target_logits, policy, kind), axis=-1)  # [b, D+1, V]
    slot = jnp.arange(d_plus_1)[None, :]
    if kind.greedy:
        best = jnp.argmax(target_logits, axis=-1).astype(jnp.int32)  # [b, D+1]
        accepted = leading_true(drafts == best[:, :-1])
        emitted = best  # accepted drafts equal the argmax, and slot a holds the correction
    else:
        log_q = jax.nn.log_softmax(policy_logits(draft_logits, policy, kind), axis=-1)  # [b, D, V]
        p_draft = jnp.exp(jnp.take_along_axis(log_p[:, :-1], drafts[..., None], axis=-1)[..., 0])
        q_draft = jnp.exp(jnp.take_along_axis(log_q, drafts[..., None], axis=-1)[..., 0])
        uniform_keys, bonus_keys = jnp.split(jax.vmap(lambda k: jax.random.split(k, 2))(keys), 2, axis=1)
        u = jax.vmap(lambda k: jax.random.uniform(k, (d_plus_1 - 1,)))(uniform_keys[:, 0])
        accepted = leading_true(u * q_draft < p_draft)
        p = jnp.exp(log_p)
        q_padded = jnp.concatenate([jnp.exp(log_q), jnp.zeros_like(p[:, :1])], axis=1)  # q = 0 at slot D
        residual = jnp.maximum(p - q_padded, 0.0)
        # Where p == q exactly the residual is empty; p itself is then the right distribution.
        residual = jnp.where(jnp.sum(residual, -1, keepdims=True) > 0, residual, p)
        at_a = jnp.take_along_axis(residual, accepted[:, None, None], axis=1)[:, 0]  # [b, V]
        bonus = jax.vmap(jax.random.categorical)(bonus_keys[:, 0], jnp.log(at_a)).astype(jnp.int32)
        drafts_padded = jnp.concatenate([drafts, jnp.zeros_like(drafts[:, :1])], axis=1)
        emitted = jnp.where(slot < accepted[:, None], drafts_padded, bonus[:, None]).astype(jnp.int32)
    logprobs = jnp.take_along_axis(log_p, emitted[..., None], axis=-1)[..., 0]
    return accepted, emitted, logprobs
