"""Token choice and its log-probability: greedy, temperature, top-k, top-p.

The *policy* is the distribution a token is actually drawn from: softmax(logits / temperature)
restricted to the top_k most likely tokens and then to the smallest set whose mass reaches top_p
(the order transformers applies them), renormalised. Each generated token comes with its log
probability under that policy, which is what an RL learner needs for importance ratios.
Greedy decoding (temperature 0) is a point mass; there we return the model's own log-softmax
(temperature 1, no truncation), the number a full forward would give for that token.

Numbers that change per request (temperature, top_k, top_p) are traced, so one compilation
serves them all; only "greedy or not" and "truncate or not" are static.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Policy(NamedTuple):
    """Traced sampling settings (scalars) plus the stopping numbers the decode loop needs."""

    temperature: jax.Array  # f32 []
    top_k: jax.Array  # i32 [], 0 = off
    top_p: jax.Array  # f32 [], 1 = off
    eos_token_id: jax.Array  # i32 [], -1 = none
    max_new_tokens: jax.Array  # i32 []
    key: jax.Array  # PRNG key data (uint32 [2]) from the seed


@dataclasses.dataclass(frozen=True)
class PolicyKind:
    """The static part of a policy: what the compiled program must contain."""

    greedy: bool
    truncated: bool  # top_k or top_p active

    @classmethod
    def of(cls, temperature: float, top_k: int, top_p: float) -> PolicyKind:
        greedy = temperature <= 0.0
        return cls(greedy=greedy, truncated=not greedy and (top_k > 0 or top_p < 1.0))


def make_policy(temperature: float, top_k: int, top_p: float, eos_token_id: int | None,
                max_new_tokens: int, seed: int) -> Policy:
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k < 0:
        raise ValueError(f"top_k={top_k} must be >= 0 (0 means no top-k truncation)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (1 means no nucleus truncation)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    return Policy(jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p),
                  jnp.int32(-1 if eos_token_id is None else eos_token_id), jnp.int32(max_new_tokens),
                  jax.random.key_data(jax.random.PRNGKey(seed)))


def policy_logits(logits: jax.Array, policy: Policy, kind: PolicyKind) -> jax.Array:
    """Log-space policy [..., vocab] (unnormalised; -inf outside the kept set).

    Greedy: the raw logits (their log-softmax is the reported log-probability).
    """
    logits = logits.astype(jnp.float32)
    if kind.greedy:
        return logits
    scaled = logits / policy.temperature
    if not kind.truncated:
        return scaled
    vocab = scaled.shape[-1]
    descending = -jnp.sort(-scaled, axis=-1)
    kth = jnp.take(descending, jnp.clip(policy.top_k - 1, 0, vocab - 1), axis=-1)[..., None]
    keep_k = jnp.where(policy.top_k > 0, descending >= kth, True)
    descending = jnp.where(keep_k, descending, -jnp.inf)
    probs = jax.nn.softmax(descending, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = keep_k & (mass_before < policy.top_p)  # the most likely token is always kept
    threshold = jnp.min(jnp.where(kept, descending, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def request_keys(key: jax.Array, count: int, first_index: jax.Array | int = 0) -> jax.Array:
    """Key data [count, 2] of requests ``first_index .. first_index + count - 1`` under a seed's key.

    A request's randomness is its own: row i of a batch seeded ``s`` is the request
    ``(s, first_index + i)``, and every token it samples is drawn with ``token_keys`` from this
    key and the token's index. Neither its slot, its batch size nor its companions enter, so a
    request decoded alone, in a padded batch or in a continuous batch draws the same tokens.
    """
    base = jax.random.wrap_key_data(key)
    indices = jnp.asarray(first_index, jnp.int32) + jnp.arange(count, dtype=jnp.int32)
    return jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(base, i)))(indices)


def request_key(seed: int, index: int = 0) -> jax.Array:
    """Key data [2] of request ``(seed, index)`` (``request_keys`` of the seed's key, one row)."""
    return request_keys(jax.random.key_data(jax.random.PRNGKey(seed)), 1, index)[0]


def token_keys(keys: jax.Array, stream: int, index: jax.Array) -> jax.Array:
    """Per-row keys for one draw: request key data [b, 2], a stream (main, draft, verify) and
    the row's token index (or, for speculative drafts and verification, the step) [b] or []."""
    index = jnp.broadcast_to(jnp.asarray(index, jnp.int32), keys.shape[:1])
    return jax.vmap(lambda key, i: jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(key), stream), i))(
        keys, index)


def first_argmax(x: jax.Array) -> jax.Array:
    """``jnp.argmax(x, axis=-1)`` (the first maximum; a NaN counts as the maximum) as a max and a
    min over indices: XLA:CPU runs argmax's paired (value, index) reduction 2.5x slower at a
    decode step's [32, 1024] logits (benchmarks/profile_decode_step.py)."""
    top = jnp.max(x, axis=-1, keepdims=True)
    index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    hit = (x == top) | jnp.isnan(x)
    return jnp.min(jnp.where(hit, index, x.shape[-1]), axis=-1)


def choose(logits: jax.Array, policy: Policy, kind: PolicyKind, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """logits [b, vocab], keys [b] -> (token [b] int32, log-probability under the policy [b])."""
    log_policy = jax.nn.log_softmax(policy_logits(logits, policy, kind), axis=-1)
    if kind.greedy:
        token = first_argmax(logits)
    else:
        token = jax.vmap(jax.random.categorical)(keys, log_policy)
    token = token.astype(jnp.int32)
    return token, jnp.take_along_axis(log_policy, token[:, None], axis=-1)[:, 0]
