"""Continuous batching: requests join and leave a running decode batch, weights change between steps.

The batch has a fixed number of *slots* (rows), each with its own range of the latent cache, so
three compiled program families serve every request mix without recompiling:

* ``admit`` (one compilation per prompt-length bucket and admit width: 1, 2, 4, ... up to
  ``admit_rows`` rows, so a few requests waiting together pad to a few rows): prefill prompts,
  write each one's cache into its slot and its first token into that slot's row; the other
  slots are untouched. The same program *refills* a running slot's cache from its context
  (prompt + tokens so far) without touching its tokens, which is how new weights take over a
  running request.
* ``decode_chunk`` (one compilation per row bucket): up to ``steps`` plain decode steps over the
  first ``rows`` slots; a slot that is free or finished does not advance (an active mask,
  ``DecodeState.done``), and each slot stops at its own ``max_new_tokens`` or EOS. A decode
  step costs per row, so when fewer requests run than there are slots (the queue is empty) the
  batch shrinks to the smallest bucket (slots, slots / 2, ... down to ``min_rows``) holding
  them; ``move_slots`` (the third program) first moves requests sitting beyond it into free
  slots below. Draining 32 requests of 8-96 new tokens from 32 slots, this served 1.11x the
  tokens/s (BENCHMARKS.md#continuous-batching).

Python drives the loop between calls: fill free slots from the queue, run a chunk, hand back
what finished, and swap weights when asked (they are an argument of the programs, so a new
version costs a transfer, never a compile). Every emitted token is recorded with the version of
the weights that sampled it. Sampling keys depend on the request ``(seed, index)`` and the
token's index only (``sampling.request_keys``), so a request draws the same tokens here as row
``index`` of ``generate(..., seed=seed)``.

With a ``mesh`` the slots split over its batch axes (data x fsdp x expert: each device holds
its slots' rows and cache) and the weights follow the model's logical rules (heads over
tensor, experts over expert), as ``generate(..., mesh=)`` lays out a batch.

On a weight update the caches of running requests were computed by the old weights. By default
they are recomputed with the new ones (AReaL's interruptible rollout), so each token is drawn
from the policy its version names given its whole context; ``recompute_on_update=False`` keeps
them (cheaper; later tokens then come from a mixture the recorded version only approximates).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from glm5_jax.config import ModelConfig
from glm5_jax.sample.cache import init_cache
from glm5_jax.sample.decode import DecodeState, decode_loop, prefill
from glm5_jax.sample.engine import CAPACITY_BUCKET, mesh_context, round_up, shard_variables
from glm5_jax.sample.sampling import Policy, PolicyKind, make_policy, request_keys

_FROM_CONFIG = object()
DEFAULT_PROMPT_BUCKET = 16  # prompt lengths are padded to a multiple of this (one program each)
DEFAULT_MIN_ROWS = 4  # the smallest decode batch (a power-of-two fraction of the slots) compiled


@dataclasses.dataclass(frozen=True)
class Request:
    """One prompt to continue. It samples as request ``(seed, index)``: row ``index`` of
    ``generate(prompts, seed=seed)`` draws the same tokens. ``tag`` is the caller's handle."""

    prompt: Sequence[int]
    max_new_tokens: int
    seed: int = 0
    index: int = 0
    tag: Any = None


@dataclasses.dataclass(frozen=True)
class Completion:
    request: Request
    token_ids: list[int]
    logprobs: list[float]
    token_versions: list[int]  # the weights' version that sampled each token
    finish_reason: str  # "eos" | "length"
    submitted_s: float  # time.perf_counter() at submit
    first_token_s: float  # when the host held the first token
    finished_s: float  # when the host held the last one


@functools.lru_cache(maxsize=4096)
def seed_key(seed: int) -> np.ndarray:
    """Key data [2] of ``seed`` (``make_policy``'s), computed once per seed on the host."""
    return np.asarray(jax.random.key_data(jax.random.PRNGKey(seed)))


class SlotState(NamedTuple):
    decode: DecodeState  # over all slots
    max_new: jax.Array  # [slots] each slot's request's max_new_tokens (0 when never used)


def _slot_spec(ndim: int, slot_axis: int, axes: tuple[str, ...]) -> jax.sharding.PartitionSpec:
    spec = [None] * ndim
    if ndim:
        spec[slot_axis] = axes
    return jax.sharding.PartitionSpec(*spec)


def _map_slots(state: SlotState, place) -> SlotState:
    """``place(array, slot_axis)`` on every array of the state: the cache's leaves are
    [layers, slots, ...], every other per-slot array [slots, ...], the step counter None."""
    cache = jax.tree_util.tree_map(lambda x: place(x, 1), state.decode.cache)
    fields = {name: place(getattr(state.decode, name), 0 if name != "step" else None) for name in DecodeState._fields
              if name not in ("cache", "draft") and getattr(state.decode, name) is not None}
    return SlotState(state.decode._replace(cache=cache, **fields), place(state.max_new, 0))


def slot_shardings(mesh: jax.sharding.Mesh, state: SlotState) -> SlotState:
    """NamedShardings of the slot state on ``mesh``: slots over its batch axes."""
    from glm5_jax.sharding import BATCH_MESH_AXES

    return _map_slots(state, lambda x, axis: jax.sharding.NamedSharding(
        mesh, _slot_spec(x.ndim, axis or 0, BATCH_MESH_AXES)))


def _keep_slots_sharded(state: SlotState) -> SlotState:
    """Inside a program traced under a mesh: the state it returns keeps the slots split over
    the batch axes (what ``slot_shardings`` placed), so no call drifts to another layout."""
    from glm5_jax.sharding import BATCH_MESH_AXES

    if jax.sharding.get_abstract_mesh().empty:
        return state
    return _map_slots(state, lambda x, axis: jax.lax.with_sharding_constraint(
        x, _slot_spec(x.ndim, axis or 0, BATCH_MESH_AXES)))


def _admit(variables: dict, state: SlotState, prompts: jax.Array, lengths: jax.Array, slots: jax.Array,
           seed_keys: jax.Array, indices: jax.Array, max_new: jax.Array, refill: jax.Array, policy: Policy, *,
           config: ModelConfig, kind: PolicyKind, indexer_mode: str) -> SlotState:
    """prompts [a, bucket] (right-padded, ``lengths`` [a] real tokens) into ``slots`` [a]; row i
    samples as request ``indices[i]`` of the seed whose key data is ``seed_keys[i]``. A slot equal
    to the slot count is a padding row: nothing of it is written.

    refill[i] False: a new request (cache, first token, row bookkeeping). True: only the slot's
    cache is rebuilt from the row (its context); its tokens and counters are kept.
    """
    keys = jax.vmap(lambda key, index: request_keys(key, 1, index)[0])(seed_keys, indices)
    new = prefill(variables, prompts, lengths, policy._replace(max_new_tokens=max_new), keys,
                  config=config, kind=kind, capacity=prompts.shape[1], out_len=state.decode.tokens.shape[1],
                  indexer_mode=indexer_mode)
    bucket = prompts.shape[1]
    cache = jax.tree_util.tree_map(  # [R, slots, T, w] <- [R, a, bucket, w]
        lambda full, rows: full.at[:, slots, :bucket].set(rows.astype(full.dtype), mode="drop"),
        state.decode.cache, new.cache)
    kept = jnp.where(refill, state.max_new.shape[0], slots)  # refilled rows keep their bookkeeping

    def put(rows: jax.Array, new_rows: jax.Array) -> jax.Array:
        return rows.at[kept].set(new_rows, mode="drop")

    names = ("lengths", "next_token", "tokens", "logprobs", "n_out", "done", "steps", "request_keys")
    fields = {name: put(getattr(state.decode, name), getattr(new, name)) for name in names}
    return _keep_slots_sharded(SlotState(state.decode._replace(cache=cache, **fields), put(state.max_new, max_new)))


def _decode_chunk(variables: dict, state: SlotState, policy: Policy, steps: jax.Array, *, config: ModelConfig,
                  kind: PolicyKind, indexer_mode: str, rows: int | None = None) -> SlotState:
    """Up to ``steps`` decode steps (fewer if all are done) over the first ``rows`` slots (None:
    every slot); the other slots are untouched."""
    def run(part: SlotState) -> SlotState:
        decode = decode_loop(variables, part.decode, policy._replace(max_new_tokens=part.max_new),
                             part.decode.step + steps, config=config, kind=kind, indexer_mode=indexer_mode)
        return part._replace(decode=decode)

    if rows in (None, state.max_new.shape[0]):
        return _keep_slots_sharded(run(state))
    prefix = _map_slots(state, lambda x, axis: x if axis is None else jax.lax.slice_in_dim(x, 0, rows, axis=axis))
    return _keep_slots_sharded(_merge_prefix(state, run(prefix)))


def _merge_prefix(state: SlotState, prefix: SlotState) -> SlotState:
    """``state`` with its first slots replaced by ``prefix``'s (scalars taken from ``prefix``)."""
    axes = _map_slots(state, lambda x, axis: -1 if axis is None else axis)  # None is no leaf to tree_map
    return jax.tree_util.tree_map(
        lambda full, new, axis: new if axis < 0 else jax.lax.dynamic_update_slice_in_dim(full, new, 0, axis),
        state, prefix, axes)


def _move_slots(state: SlotState, source: jax.Array, target: jax.Array) -> SlotState:
    """Each slot ``source[i]``'s rows copied into slot ``target[i]`` (a target equal to the slot
    count: padding, nothing moves); every source is then free (done)."""
    slots = state.max_new.shape[0]

    def move(x, axis):
        if axis is None:
            return x
        rows = jnp.take(x, source, axis=axis)
        index = (slice(None),) * axis + (target,)
        return x.at[index].set(rows, mode="drop")

    moved = _map_slots(state, move)
    done = moved.decode.done.at[jnp.where(target < slots, source, slots)].set(True, mode="drop")
    return _keep_slots_sharded(moved._replace(decode=moved.decode._replace(done=done)))


@functools.lru_cache(maxsize=16)
def compiled_slot_programs(config: ModelConfig, kind: PolicyKind, indexer_mode: str, mesh=None):
    """(admit, decode_chunk, move_slots) jitted, each donating the slot state; shapes come from the
    arguments (decode_chunk: one compilation per ``rows``). One set per mesh (None: one device),
    so each batcher layout counts its own compilations."""
    static = {"config": config, "kind": kind, "indexer_mode": indexer_mode}
    return (jax.jit(functools.partial(_admit, **static), donate_argnums=(1,)),
            jax.jit(functools.partial(_decode_chunk, **static), donate_argnums=(1,), static_argnames=("rows",)),
            # A partial of its own: jit wrappers of one function share one cache of compilations.
            jax.jit(functools.partial(_move_slots), donate_argnums=(0,)))


def empty_slots(config: ModelConfig, slots: int, capacity: int) -> SlotState:
    """Every slot free (done); caches zero."""
    decode = DecodeState(
        cache=init_cache(config, slots, capacity), lengths=jnp.zeros((slots,), jnp.int32),
        next_token=jnp.zeros((slots,), jnp.int32), tokens=jnp.zeros((slots, capacity), jnp.int32),
        logprobs=jnp.zeros((slots, capacity), jnp.float32), n_out=jnp.zeros((slots,), jnp.int32),
        done=jnp.ones((slots,), bool), steps=jnp.zeros((slots,), jnp.int32), step=jnp.int32(0),
        request_keys=jnp.zeros((slots, 2), jnp.uint32), draft=None)
    return SlotState(decode, jnp.zeros((slots,), jnp.int32))


@dataclasses.dataclass
class _Running:
    request: Request
    submitted_s: float
    first_token_s: float = float("nan")
    versions: list[int] = dataclasses.field(default_factory=list)  # one per token the host has seen


class ContinuousBatcher:
    """A decode batch of ``slots`` rows that requests join and leave between steps.

    ``capacity``: cache positions per slot (a request needs prompt + max_new_tokens of them).
    ``steps_per_call``: decode steps per device call; a finished slot is refilled after at most
    this many steps (1: at once; more: less host work per token). ``admit_rows``: requests
    prefilled together when several wait for free slots (a lone request is prefilled alone).
    ``min_rows``: the smallest decode batch compiled (``row_buckets``; with a mesh, every slot).
    """

    def __init__(self, config: ModelConfig, slots: int, capacity: int, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, *, eos_token_id=_FROM_CONFIG, steps_per_call: int = 4,
                 prompt_bucket: int = DEFAULT_PROMPT_BUCKET, admit_rows: int = 8, recompute_on_update: bool = True,
                 indexer_mode: str = "auto", mesh: jax.sharding.Mesh | None = None,
                 min_rows: int = DEFAULT_MIN_ROWS) -> None:
        if slots < 1 or steps_per_call < 1 or prompt_bucket < 1 or min_rows < 1:
            raise ValueError(f"slots={slots}, steps_per_call={steps_per_call}, prompt_bucket={prompt_bucket} and "
                             f"min_rows={min_rows} must be >= 1")
        if mesh is not None:
            from glm5_jax.sharding import batch_shards

            if slots % batch_shards(mesh):
                raise ValueError(f"slots={slots} must split evenly over the mesh's batch axes "
                                 f"(data x fsdp x expert = {batch_shards(mesh)} of {dict(mesh.shape)})")
        self.mesh = mesh
        self.config = config
        self.slots = slots
        self.capacity = round_up(capacity, CAPACITY_BUCKET)
        self.steps_per_call = steps_per_call
        self.prompt_bucket = prompt_bucket
        self.admit_rows = max(1, min(admit_rows, slots))
        # Prefill widths: a group of n waiting requests pads to the smallest that holds it.
        self.admit_widths = sorted({1 << i for i in range(self.admit_rows.bit_length()) if 1 << i < self.admit_rows}
                                   | {self.admit_rows})
        # Decode programs for the first `rows` slots: slots, slots // 2, ... down to min_rows (one
        # device only: a prefix of slots split over a mesh would leave its shards uneven).
        self.row_buckets = [slots] if mesh is not None else sorted(
            {slots} | {slots >> i for i in range(1, slots.bit_length()) if slots >> i >= min_rows})
        self.decode_calls_by_rows: collections.Counter[int] = collections.Counter()
        self.recompute_on_update = recompute_on_update
        eos = config.eos_token_id if eos_token_id is _FROM_CONFIG else eos_token_id
        self.eos_token_id = eos
        self.kind = PolicyKind.of(temperature, top_k, top_p)
        # max_new_tokens is per slot (SlotState.max_new) and the key per request.
        self.policy = make_policy(temperature, top_k, top_p, eos, self.capacity, seed=0)
        self._admit, self._decode, self._move = compiled_slot_programs(config, self.kind, indexer_mode, mesh)
        self.state = self._empty_slots()
        self.variables: dict | None = None
        self.version = 0
        self.recomputed_tokens = 0  # context tokens re-prefilled after weight updates
        self._queue: collections.deque[tuple[Request, float]] = collections.deque()
        self._running: dict[int, _Running] = {}  # slot -> request

    # Requests ---------------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        prompt_len = len(request.prompt)
        if prompt_len < 1 or request.max_new_tokens < 1:
            raise ValueError(f"request {request.tag!r}: prompt of {prompt_len} tokens and max_new_tokens="
                             f"{request.max_new_tokens} must both be >= 1")
        if prompt_len + request.max_new_tokens > self.capacity:
            raise ValueError(f"request {request.tag!r}: prompt {prompt_len} + max_new_tokens "
                             f"{request.max_new_tokens} exceeds the slot capacity {self.capacity}")
        ids = np.asarray(request.prompt)
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(f"request {request.tag!r} has token ids outside [0, {self.config.vocab_size})")
        self._queue.append((request, time.perf_counter()))

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def idle(self) -> bool:
        return not self._queue and not self._running

    # Weights ----------------------------------------------------------------------------------
    def set_weights(self, variables: dict, version: int = 0) -> None:
        """Use ``variables`` from the next call on; with a new version and ``recompute_on_update``
        the running requests' caches are rebuilt under them first."""
        self.variables = (jax.device_put(variables) if self.mesh is None
                          else shard_variables(self.config, self.mesh, variables))
        changed, self.version = version != self.version, int(version)
        if changed and self.recompute_on_update and self._running:
            tokens = np.asarray(self.state.decode.tokens)
            n_out, done = np.asarray(self.state.decode.n_out), np.asarray(self.state.decode.done)
            rows = []
            for slot, running in self._running.items():
                if not done[slot]:
                    # The cache holds the prompt and every token but the last (the next step feeds it).
                    context = list(running.request.prompt) + tokens[slot, :n_out[slot] - 1].tolist()
                    rows.append((slot, context, running.request))
                    self.recomputed_tokens += len(context)
            self._write_slots(rows, refill=True)

    # The loop ---------------------------------------------------------------------------------
    def step(self) -> list[Completion]:
        """Fill free slots from the queue, run one chunk of decode steps, return what finished."""
        if self.variables is None:
            raise RuntimeError("call set_weights(variables, version) before step()")
        admitted = self._admit_queued()
        if not self._running:
            return []
        if admitted:  # the first tokens exist once the admissions ran: stamp them
            n_out = np.asarray(self.state.decode.n_out)
            now = time.perf_counter()
            for slot in admitted:
                self._running[slot].first_token_s = now
                self._running[slot].versions += [self.version] * int(n_out[slot])
        rows = self._pack_running()
        self.decode_calls_by_rows[rows] += 1
        with mesh_context(self.mesh):
            self.state = self._decode(self.variables, self.state, self.policy, jnp.int32(self.steps_per_call),
                                      rows=rows)
        n_out, done = np.asarray(self.state.decode.n_out), np.asarray(self.state.decode.done)
        now = time.perf_counter()
        finished = []
        for slot, running in self._running.items():
            running.versions += [self.version] * (int(n_out[slot]) - len(running.versions))
            if done[slot]:
                finished.append(slot)
        if not finished:
            return []
        tokens, logprobs = np.asarray(self.state.decode.tokens), np.asarray(self.state.decode.logprobs)
        return [self._complete(slot, tokens[slot], logprobs[slot], int(n_out[slot]), now) for slot in finished]

    def run(self, requests: Sequence[Request]) -> list[Completion]:
        """Submit ``requests``, step until all are done; completions in request order."""
        for request in requests:
            self.submit(request)
        by_request: dict[int, Completion] = {}
        while not self.idle:
            for completion in self.step():
                by_request[id(completion.request)] = completion
        return [by_request[id(request)] for request in requests]

    def warm_up(self) -> None:
        """Compile every program (each prompt bucket's admit, the decode chunk) before timing.
        Slots must be free; the state is reset afterwards."""
        if self._running or self._queue:
            raise RuntimeError("warm_up needs an idle batcher")
        request = Request([0], 1)
        for bucket in self.buckets():
            for rows in self.admit_widths:
                self._write_slots([(slot, [0] * bucket, request) for slot in range(rows)], refill=False)
        with mesh_context(self.mesh):
            for rows in self.row_buckets:
                self.state = self._decode(self.variables, self.state, self.policy, jnp.int32(1), rows=rows)
            if len(self.row_buckets) > 1:
                self.state = self._move(self.state, *self._moves([]))
        jax.block_until_ready(self.state)
        self.state = self._empty_slots()

    def buckets(self) -> list[int]:
        """Prompt (and refill context) lengths that have a program: multiples of prompt_bucket."""
        return list(range(self.prompt_bucket, self.capacity, self.prompt_bucket)) + [self.capacity]

    # Internals --------------------------------------------------------------------------------
    def _empty_slots(self) -> SlotState:
        state = empty_slots(self.config, self.slots, self.capacity)
        return state if self.mesh is None else jax.device_put(state, slot_shardings(self.mesh, state))

    def _pack_running(self) -> int:
        """The fewest leading slots (a row bucket) that can hold every running request; requests
        beyond them move into their free slots first. Returns that row count."""
        rows = next(b for b in self.row_buckets if b >= len(self._running))
        outside = sorted(slot for slot in self._running if slot >= rows)
        if outside:
            free = [slot for slot in range(rows) if slot not in self._running]
            moves = list(zip(outside, free))
            self.state = self._move(self.state, *self._moves(moves))
            for source, target in moves:
                self._running[target] = self._running.pop(source)
        return rows

    def _moves(self, moves: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """(source, target) [slots] for ``_move_slots``: padding targets equal the slot count."""
        source, target = np.zeros((self.slots,), np.int32), np.full((self.slots,), self.slots, np.int32)
        for i, (s, t) in enumerate(moves):
            source[i], target[i] = s, t
        return source, target

    def _admit_queued(self) -> list[int]:
        free = [slot for slot in range(self.slots) if slot not in self._running]
        admitted = []
        while free and self._queue:
            request, submitted = self._queue.popleft()
            slot = free.pop(0)
            self._running[slot] = _Running(request, submitted)
            admitted.append(slot)
        self._write_slots([(slot, list(self._running[slot].request.prompt), self._running[slot].request)
                           for slot in admitted], refill=False)
        return admitted

    def _write_slots(self, rows: list[tuple[int, list[int], Request]], refill: bool) -> None:
        """Prefill (slot, tokens, request) rows: groups of ``admit_rows`` (padded to an admit width),
        shortest first, so a group pads to a bucket close to each of its rows."""
        rows = sorted(rows, key=lambda row: len(row[1]))
        while rows:
            group, rows = rows[:self.admit_rows], rows[self.admit_rows:]
            width = next(w for w in self.admit_widths if w >= len(group))
            bucket = next(b for b in self.buckets() if b >= max(len(tokens) for _, tokens, _ in group))
            prompts = np.zeros((width, bucket), np.int32)
            lengths = np.ones((width,), np.int32)
            slots = np.full((width,), self.slots, np.int32)  # padding rows write nothing
            seed_keys = np.zeros((width, 2), np.uint32)
            indices, max_new = np.zeros((width,), np.int32), np.ones((width,), np.int32)
            for i, (slot, tokens, request) in enumerate(group):
                prompts[i, :len(tokens)], lengths[i], slots[i] = tokens, len(tokens), slot
                seed_keys[i], indices[i], max_new[i] = seed_key(request.seed), request.index, request.max_new_tokens
            with mesh_context(self.mesh):
                self.state = self._admit(self.variables, self.state, prompts, lengths, slots, seed_keys, indices,
                                         max_new, np.full((width,), refill), self.policy)

    def _complete(self, slot: int, tokens: np.ndarray, logprobs: np.ndarray, n_out: int, now: float) -> Completion:
        running = self._running.pop(slot)
        keep = min(n_out, running.request.max_new_tokens)
        reason = "length"
        if self.eos_token_id is not None:
            hits = np.flatnonzero(tokens[:keep] == self.eos_token_id)
            if hits.size:
                keep, reason = int(hits[0]) + 1, "eos"
        return Completion(running.request, tokens[:keep].tolist(), logprobs[:keep].tolist(),
                          running.versions[:keep], reason, running.submitted_s, running.first_token_s, now)
