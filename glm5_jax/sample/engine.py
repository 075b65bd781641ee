"""Host side of generation: pad a batch, run the compiled prefill and decode loop, trim outputs.

Compiled programs are cached per (config, static policy kind, shapes, draft steps, mesh), and
shapes are bucketed (prompt length to a multiple of 8, cache capacity to a multiple of 16) so a
stream of requests reuses a few compilations. Only the stop-string check runs on the host,
between chunks of decode steps; without stop strings the whole decode is one device call.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glm5_jax.config import ModelConfig
from glm5_jax.sample.decode import DecodeState, decode_loop, prefill
from glm5_jax.sample.sampling import PolicyKind, make_policy, request_keys
from glm5_jax.sample.stop import StopCriteria, StopSpec

PROMPT_BUCKET = 8
CAPACITY_BUCKET = 16
STOP_CHECK_STEPS = 16  # decode steps between host-side stop-string checks
_FROM_CONFIG = object()


@dataclasses.dataclass(frozen=True)
class Generation:
    """One prompt's continuation: new token ids and each one's log-probability under the policy."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "eos" | "stop" | "length"


@dataclasses.dataclass(frozen=True)
class BatchResult:
    generations: list[Generation]
    decode_steps: np.ndarray  # [b] main-model decode/verify steps while the row was active
    emitted: np.ndarray  # [b] tokens those steps emitted (before trimming to stops/max_new_tokens)

    @property
    def mean_accepted_length(self) -> float:
        """Tokens per main-model decode step (1.0 without speculation)."""
        steps = int(self.decode_steps.sum())
        return float(self.emitted.sum() / steps) if steps else float("nan")


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@functools.lru_cache(maxsize=32)
def compiled(config: ModelConfig, kind: PolicyKind, capacity: int, out_len: int, draft_steps: int,
             indexer_mode: str, mesh=None) -> tuple[Callable, Callable]:
    """(prefill, decode_loop) jitted for one static setting; the loop donates its state."""
    static = {"config": config, "kind": kind, "draft_steps": draft_steps, "indexer_mode": indexer_mode}
    prefill_fn = jax.jit(functools.partial(prefill, capacity=capacity, out_len=out_len, **static))
    loop_fn = jax.jit(functools.partial(decode_loop, **static), donate_argnums=(1,))
    return prefill_fn, loop_fn


def pad_prompts(prompts: Sequence[Sequence[int]], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to [b, bucketed max length] with 0; lengths [b]."""
    if not prompts:
        raise ValueError("prompts is empty; pass a list of token-id lists")
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    if lengths.min() < 1:
        raise ValueError(f"prompt {int(np.argmin(lengths))} is empty; every prompt needs at least one token")
    padded = np.zeros((len(prompts), round_up(int(lengths.max()), PROMPT_BUCKET)), np.int32)
    for i, prompt in enumerate(prompts):
        ids = np.asarray(prompt, np.int64)
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"prompt {i} has token ids outside [0, vocab_size={vocab_size})")
        padded[i, :len(ids)] = ids
    return padded, lengths


def _trim(tokens: np.ndarray, logprobs: np.ndarray, n_out: int, max_new: int, eos: int | None,
          stop_at: int | None) -> Generation:
    keep, reason = min(n_out, max_new), "length"
    if eos is not None:
        hits = np.flatnonzero(tokens[:keep] == eos)
        if hits.size:
            keep, reason = int(hits[0]) + 1, "eos"
    if stop_at is not None and stop_at <= keep:
        keep, reason = stop_at, "stop"
    return Generation([int(t) for t in tokens[:keep]], [float(x) for x in logprobs[:keep]], reason)


def run_batch(config: ModelConfig, variables: dict, prompts: Sequence[Sequence[int]], max_new_tokens: int,
              temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0, stop: StopSpec = None,
              *, eos_token_id=_FROM_CONFIG, tokenizer=None, speculative_steps: int = 0,
              indexer_mode: str = "auto", mesh=None, min_capacity: int = 0,
              first_request: int = 0) -> BatchResult:
    """``generate`` with decode statistics (mean accepted length for speculative decoding).

    ``min_capacity``: allocate at least this many cache positions (a server keeps one capacity
    for every request, so one compilation serves them all). ``first_request``: row i samples
    as request ``(seed, first_request + i)`` (``sampling.request_keys``), so a long list split
    into calls draws what one call would, and ``continuous.ContinuousBatcher`` draws the same.
    """
    if speculative_steps and not config.num_mtp_layers:
        raise ValueError(f"speculative_steps={speculative_steps} needs MTP parameters but the config has "
                         "num_mtp_layers=0; use speculative_steps=0")
    if speculative_steps < 0:
        raise ValueError(f"speculative_steps={speculative_steps} must be >= 0")
    eos = config.eos_token_id if eos_token_id is _FROM_CONFIG else eos_token_id
    criteria = StopCriteria.parse(stop, None if tokenizer is None else tokenizer.decode)
    prompt, lengths = pad_prompts(prompts, config.vocab_size)
    draft = int(speculative_steps)
    capacity = round_up(max(prompt.shape[1] + max_new_tokens + draft + 1, min_capacity), CAPACITY_BUCKET)
    out_len = max_new_tokens + draft + 1
    kind = PolicyKind.of(temperature, top_k, top_p)
    policy = make_policy(temperature, top_k, top_p, eos, max_new_tokens, seed)
    prefill_fn, loop_fn = compiled(config, kind, capacity, out_len, draft, indexer_mode, mesh)
    keys = request_keys(policy.key, len(prompts), first_request)

    with mesh_context(mesh):
        if mesh is not None:
            variables, prompt, lengths = _shard_inputs(config, mesh, variables, prompt, lengths)
        state: DecodeState = prefill_fn(variables, jnp.asarray(prompt), jnp.asarray(lengths), policy, keys)
        stop_at: dict[int, int] = {}
        chunk = STOP_CHECK_STEPS if criteria else max_new_tokens
        while True:
            limit = jnp.int32(min(int(state.step) + chunk, max_new_tokens))
            state = loop_fn(variables, state, policy, limit)
            done = np.asarray(state.done).copy()
            if criteria:
                tokens, n_out = np.asarray(state.tokens), np.asarray(state.n_out)
                for i in range(len(done)):  # rows finished by EOS this chunk may hold an earlier stop
                    if i in stop_at:
                        continue
                    kept = criteria.kept_length(tokens[i, :n_out[i]])
                    if kept is not None:
                        stop_at[i], done[i] = kept, True
                state = state._replace(done=jnp.asarray(done))
            if done.all() or int(state.step) >= max_new_tokens:
                break
    tokens, logprobs = np.asarray(state.tokens), np.asarray(state.logprobs)
    n_out = np.asarray(state.n_out)
    generations = [_trim(tokens[i], logprobs[i], int(n_out[i]), max_new_tokens, eos, stop_at.get(i))
                   for i in range(len(prompts))]
    return BatchResult(generations, np.asarray(state.steps), n_out - 1)


def mesh_context(mesh):
    import contextlib

    if mesh is None:
        return contextlib.nullcontext()
    from glm5_jax.sharding import activate

    return activate(mesh)


def shard_variables(config: ModelConfig, mesh, variables):
    """The parameters on ``mesh`` by the model's logical rules (heads over tensor, experts over
    expert)."""
    from glm5_jax.model import GLM5Model, logical_partition_specs
    from glm5_jax.sharding import logical_shardings

    return jax.device_put(variables, logical_shardings(mesh, logical_partition_specs(GLM5Model(config)), variables))


def _shard_inputs(config: ModelConfig, mesh, variables, prompt, lengths):
    """Parameters by the logical rules (heads over tensor, experts over expert); the batch over
    data x fsdp x expert when it divides, else replicated."""
    from glm5_jax.sharding import batch_shards, batch_sharding, replicated

    variables = shard_variables(config, mesh, variables)
    if prompt.shape[0] % batch_shards(mesh) == 0:
        return variables, jax.device_put(prompt, batch_sharding(mesh)), jax.device_put(lengths, batch_sharding(mesh, 1))
    return variables, jax.device_put(prompt, replicated(mesh)), jax.device_put(lengths, replicated(mesh))
