"""Prefill and the on-device decode loops (plain and MTP-speculative), as pure functions.

Everything has static shapes: prompts are right-padded to [batch, prompt_len], the cache has a
fixed capacity, outputs go to fixed [batch, out_len] buffers, and each row carries its own
length (its next position). One ``lax.while_loop`` runs decode steps until every row is done
(EOS or max_new_tokens) or a step limit the host chose (so stop strings can be checked between
chunks); finished rows stop advancing and their outputs stop changing.

Row bookkeeping, for a row whose main-model cache holds positions 0 .. length - 1:
``next_token`` is the last emitted token, not yet fed to the main model (its position is
``length``). With speculation the drafter state holds the first draft for position length + 1,
the MTP hidden that produced it and its logits.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from glm5_jax.config import ModelConfig
from glm5_jax.model.mtp import shift_left
from glm5_jax.sample.acceptance import verify_drafts
from glm5_jax.sample.cache import MTP, init_cache
from glm5_jax.sample.cached_model import CachedGLM5
from glm5_jax.sample.sampling import (
    Policy,
    PolicyKind,
    choose,
    request_keys,
    token_keys,
)

MAIN_STREAM, DRAFT_STREAM, VERIFY_STREAM = 0, 1, 2


class DecodeState(NamedTuple):
    cache: dict
    lengths: jax.Array  # [b] positions held by the main cache
    next_token: jax.Array  # [b]
    tokens: jax.Array  # [b, out_len] emitted tokens
    logprobs: jax.Array  # [b, out_len]
    n_out: jax.Array  # [b] tokens emitted (may overshoot max_new_tokens by < draft steps + 1)
    done: jax.Array  # [b] bool
    steps: jax.Array  # [b] decode/verify steps taken while the row was active
    step: jax.Array  # [] loop iterations so far
    request_keys: jax.Array  # [b, 2] each row's own key data (sampling.request_keys)
    draft: dict | None  # {"token": [b], "hidden": [b, d], "logits": [b, V]} when speculating


def place(buffer: jax.Array, start: jax.Array, values: jax.Array, count: jax.Array) -> jax.Array:
    """buffer [b, n] with values[i, :count[i]] written at start[i] ...; the rest untouched."""
    width = values.shape[1]
    offsets = jnp.arange(width)[None, :]
    index = jnp.where(offsets < count[:, None], start[:, None] + offsets, buffer.shape[1])
    rows = jnp.broadcast_to(jnp.arange(buffer.shape[0])[:, None], index.shape)
    return buffer.at[rows, index].set(values.astype(buffer.dtype), mode="drop")


def _emit(state: DecodeState, tokens: jax.Array, logprobs: jax.Array, count: jax.Array,
          policy: Policy) -> DecodeState:
    """Record count[i] new tokens per row (count 0 for finished rows) and update done."""
    written = jnp.arange(tokens.shape[1])[None, :] < count[:, None]
    hit_eos = jnp.any(written & (tokens == policy.eos_token_id), axis=1)
    n_out = state.n_out + count
    done = state.done | hit_eos | (n_out >= policy.max_new_tokens)
    return state._replace(tokens=place(state.tokens, state.n_out, tokens, count),
                          logprobs=place(state.logprobs, state.n_out, logprobs, count),
                          n_out=n_out, done=done)


def _choose_draft(logits, policy, kind, keys, step, stream_offset):
    return choose(logits, policy, kind, token_keys(keys, DRAFT_STREAM + 8 * stream_offset, step))[0]


def prefill(variables: dict, prompt: jax.Array, lengths: jax.Array, policy: Policy,
            keys: jax.Array | None = None, *, config: ModelConfig, kind: PolicyKind, capacity: int,
            out_len: int, draft_steps: int = 0, indexer_mode: str = "auto") -> DecodeState:
    """Run the prompts [b, prompt_len] (right-padded; lengths [b]) and emit the first token.

    ``keys``: each row's request key data [b, 2]; default rows 0 .. b - 1 of ``policy.key``.
    """
    batch, prompt_len = prompt.shape
    keys = request_keys(policy.key, batch) if keys is None else keys
    positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), (batch, prompt_len))
    model = CachedGLM5(config, fresh=True, indexer_mode=indexer_mode)
    cache = init_cache(config, batch, capacity, with_mtp=draft_steps > 0)
    last = lengths - 1
    logits, hidden, cache = model.apply(variables, prompt, positions, cache, last)
    token, logprob = choose(logits, policy, kind, token_keys(keys, MAIN_STREAM, 0))
    state = DecodeState(
        cache=cache, lengths=lengths, next_token=token,
        tokens=jnp.zeros((batch, out_len), jnp.int32), logprobs=jnp.zeros((batch, out_len), jnp.float32),
        n_out=jnp.zeros((batch,), jnp.int32), done=jnp.zeros((batch,), bool),
        steps=jnp.zeros((batch,), jnp.int32), step=jnp.int32(0), request_keys=keys, draft=None)
    state = _emit(state, token[:, None], logprob[:, None], jnp.ones((batch,), jnp.int32), policy)
    if not draft_steps:
        return state
    # The drafter's cache covers the prompt too: at position p it sees (hidden_p, token p + 1).
    following = shift_left(prompt, 1)
    following = jnp.where(positions == last[:, None], token[:, None], following)
    draft_logits, draft_hidden, cache = model.apply(variables, hidden, following, positions, state.cache, last,
                                                    method=CachedGLM5.mtp_draft)
    draft = {"token": _choose_draft(draft_logits, policy, kind, keys, 0, 0), "hidden": draft_hidden,
             "logits": draft_logits}
    return state._replace(cache=cache, draft=draft)


def _plain_step(variables, state: DecodeState, policy: Policy, config: ModelConfig, kind: PolicyKind,
                indexer_mode: str) -> DecodeState:
    model = CachedGLM5(config, indexer_mode=indexer_mode)
    # A finished row reads and writes slot 0 only: it no longer widens the indexer's bucket.
    positions = jnp.where(state.done, 0, state.lengths)
    logits, _, cache = model.apply(variables, state.next_token[:, None], positions[:, None], state.cache)
    # The key of a row's next token depends on its request and that token's index alone.
    token, logprob = choose(logits[:, 0], policy, kind, token_keys(state.request_keys, MAIN_STREAM, state.n_out))
    active = (~state.done).astype(jnp.int32)
    state = _emit(state._replace(cache=cache), token[:, None], logprob[:, None], active, policy)
    return state._replace(lengths=state.lengths + active, next_token=jnp.where(active > 0, token, state.next_token),
                          steps=state.steps + active, step=state.step + 1)


def token_count(state: DecodeState) -> int:
    return state.next_token.shape[0]


def _speculative_step(variables, state: DecodeState, policy: Policy, config: ModelConfig, kind: PolicyKind,
                      draft_steps: int, indexer_mode: str) -> DecodeState:
    """Draft D tokens with the MTP module, verify them in one main-model pass, keep a + 1."""
    model = CachedGLM5(config, indexer_mode=indexer_mode)
    batch = token_count(state)
    zeros = jnp.zeros((batch,), jnp.int32)
    cache, draft = state.cache, state.draft

    def chain(carry, i):
        """MTP at position length + i - 1 reads draft i and predicts token length + i + 1."""
        mtp_cache, token, hidden = carry
        position = (state.lengths + i - 1)[:, None]
        logits, hidden, mtp_cache = model.apply(variables, hidden[:, None], token[:, None], position, mtp_cache,
                                                zeros, method=CachedGLM5.mtp_draft)
        token = _choose_draft(logits, policy, kind, state.request_keys, state.step + 1, i)
        return (mtp_cache, token, hidden), (token, logits)

    # Only the drafter's cache rides through the chain: the main cache stays out of this loop.
    (mtp_cache, _, _), (chained, chained_logits) = jax.lax.scan(
        chain, ({MTP: cache[MTP]}, draft["token"], draft["hidden"]), jnp.arange(1, draft_steps, dtype=jnp.int32))
    cache = {**cache, **mtp_cache}
    tokens = jnp.concatenate([draft["token"][None], chained], axis=0)  # [D, b]
    logits = jnp.concatenate([draft["logits"][None], chained_logits], axis=0)  # [D, b, V]
    drafts = tokens.T  # [b, D]
    verify_tokens = jnp.concatenate([state.next_token[:, None], drafts], axis=1)  # [b, D + 1]
    positions = state.lengths[:, None] + jnp.arange(draft_steps + 1, dtype=jnp.int32)[None, :]
    target_logits, main_hidden, cache = model.apply(variables, verify_tokens, positions, cache)
    accepted, emitted, logprobs = verify_drafts(
        target_logits, jnp.swapaxes(logits, 0, 1), drafts, policy, kind,
        token_keys(state.request_keys, VERIFY_STREAM, state.step + 1))
    active = (~state.done).astype(jnp.int32)
    count = active * (accepted + 1)
    state = _emit(state._replace(cache=cache), emitted, logprobs, count, policy)
    last = jnp.take_along_axis(emitted, accepted[:, None], axis=1)[:, 0]
    # Catch the drafter up on the verified positions (hidden_p with token p + 1, p = length ..
    # length + a) and read its first draft for the next step at p = length + a.
    next_logits, next_hidden, cache = model.apply(variables, main_hidden, emitted, positions, state.cache,
                                                  accepted, method=CachedGLM5.mtp_draft)
    new_draft = {"token": _choose_draft(next_logits, policy, kind, state.request_keys, state.step + 1, draft_steps),
                 "hidden": next_hidden, "logits": next_logits}
    keep = active > 0
    new_draft = jax.tree_util.tree_map(
        lambda new, old: jnp.where(keep.reshape((-1,) + (1,) * (new.ndim - 1)), new, old), new_draft, draft)
    return state._replace(cache=cache, lengths=state.lengths + count,
                          next_token=jnp.where(keep, last, state.next_token), steps=state.steps + active,
                          step=state.step + 1, draft=new_draft)


def decode_loop(variables: dict, state: DecodeState, policy: Policy, step_limit: jax.Array, *,
                config: ModelConfig, kind: PolicyKind, draft_steps: int = 0,
                indexer_mode: str = "auto") -> DecodeState:
    """Decode until every row is done or ``step_limit`` loop iterations have run in total."""
    def keep_going(s: DecodeState):
        return (s.step < step_limit) & ~jnp.all(s.done)

    def body(s: DecodeState) -> DecodeState:
        if draft_steps:
            return _speculative_step(variables, s, policy, config, kind, draft_steps, indexer_mode)
        return _plain_step(variables, s, policy, config, kind, indexer_mode)

    return jax.lax.while_loop(keep_going, body, state)
