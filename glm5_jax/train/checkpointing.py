"""Orbax checkpoints of the whole run: state, data-iterator position, and a fingerprint.

Each checkpoint step directory holds three items:

* ``state``: the TrainState (params, optimizer state, routing biases, RNG, counters), saved
  asynchronously; restored straight into the shardings of the *current* mesh, so a run saved
  on one device resumes on eight and back, and on any number of processes;
* ``data``: the data iterator's position, one small JSON file per process
  (``process_<i>-of-<n>.json``, grain's format; restored by ``_saved_position``);
* ``meta``: the step and a fingerprint of the state, a position-weighted uint32 checksum of
  every leaf's bits. Integer sums are exact in any order, so the fingerprint does not depend
  on how the state is sharded or on the process count, and a restore that reads different
  bits (a truncated or damaged file that the storage layer did not notice) is caught. It is
  computed on the host from the shards, not compiled (a jitted checksum of ~100 leaves costs
  ~30 s to compile on CPU, per mesh).

Orbax writes a step into a temporary directory and renames it when complete, so a save cut
off (even by kill -9) leaves no step behind (on ``gs://``, which has no atomic rename, it marks
a complete step with a ``commit_success.txt`` instead). The directory is an ``epath.Path``
(``glm5_jax/paths.py``), so a ``gs://`` workdir checkpoints to the bucket.

What a failed restore means, and what it may touch (``restore_latest``; a run is never lost
for a reason that is not proven damage of the step at hand):

* **incompatible** (``CheckpointIncompatibleError``, raised, nothing moved): the step's saved
  tree (leaf paths, shapes, dtypes, read from orbax's metadata before any array is read)
  differs from the state the current config builds (another optimizer, preset, model
  override or dtype), or its data position lacks a stream this run reads (below). The
  message names the first differing leaves; rerun with the config that wrote the workdir, or
  use a new ``--workdir``.
* **unavailable** (``CheckpointUnavailableError``, raised, nothing moved): reading failed in a
  way that may pass or that is not the checkpoint's fault: an ``OSError`` (a flaky or absent
  filesystem, a missing file, no permission) or a TensorStore status in
  ``_TRANSIENT_STATUSES`` (UNAVAILABLE, DEADLINE_EXCEEDED, PERMISSION_DENIED, ...). Each read
  is tried ``read_attempts`` times, with exponential backoff, first. Also raised when no step's
  metadata can be decoded at all: a format this code cannot read is not proof of damage.
* **corrupt** (that one step is moved to ``<workdir>/corrupt_checkpoints/``, and the next older
  step is tried): the restored bits fail the fingerprint or the step numbers disagree
  (``CheckpointCorruptError``); TensorStore reports DATA_LOSS (a failed checksum) reading the
  step, its metadata included; or decoding the step fails otherwise (a ``ValueError`` such as
  TensorStore's NOT_FOUND, a JSON decode error) while its metadata fits, or its metadata does
  not decode while an older step's does. When every step is corrupt, the run starts from
  step 0 and the log says so.
* anything else (a bug, an unexpected exception type) propagates unchanged; nothing is moved.

With several processes each restore's outcome is agreed (the worst any process saw) before a
step is moved or accepted, so all processes take the same path; a step is moved by process 0
and the others wait for it.

Another process count: the state restores onto any process count (orbax reads each process's
shards of the current shardings), and so does the data position. Each process saves the
positions of the document streams it reads (``glm5_jax/data/streams.py``: stream ``s`` is the
same documents whatever the process count; a plain grain iterator is stream "0") as
``process_<i>-of-<n>.json``. On restore, a process whose own file holds exactly the streams it
reads now takes it (the saving layout; what grain's handler does). Otherwise the positions of
all ``n`` files are merged by stream index (files holding the same stream must agree, else the
step is corrupt) and each process takes its streams. A stream no file holds (``data.num_streams``
or the batch changed) is refused as incompatible; in a one-process run so is a saved stream it
does not read. (With several processes, a ``num_streams`` change that only drops streams is not
detected: each process sees only its own streams.) An incomplete or mixed set of files is
corrupt.

Why the iterator state is copied at save time: the save of a non-array item may run after
``save`` returns, when the loop has already drawn the next batch; a snapshot taken in the
loop is the position that belongs to the saved step.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from glm5_jax.paths import absolute, move_tree
from glm5_jax.train.train_state import TrainState

CORRUPT_DIR = "corrupt_checkpoints"
_LOG = logging.getLogger("glm5_jax.train")
_T = TypeVar("_T")


class _IteratorPosition:
    """The saved position of an iterator, for grain's orbax handler (``get_state`` bytes)."""

    def __init__(self, state: dict):
        self._json = json.dumps(state, indent=2).encode()

    def get_state(self) -> bytes:
        return self._json


_POSITION_MULTIPLIER = np.uint64(2654435761)
_LOW_32_BITS = np.uint64(0xFFFFFFFF)


def _bits(values: np.ndarray) -> np.ndarray:
    """Every element's bit pattern as uint64 (float32/int32 -> 32 bits, bfloat16 -> 16)."""
    if values.dtype.itemsize == 4:
        return values.view(np.uint32).astype(np.uint64)
    if values.dtype.itemsize == 2:
        return values.view(np.uint16).astype(np.uint64)
    return values.astype(np.uint64)


def _global_positions(shape: tuple[int, ...], index: tuple[slice, ...]) -> np.ndarray:
    """Row-major positions in the whole array of the elements of the shard at ``index``."""
    positions = np.zeros((1,) * len(shape), np.uint64)
    stride = 1
    for axis in reversed(range(len(shape))):
        start, stop, _ = index[axis].indices(shape[axis])
        along = np.arange(start, stop, dtype=np.uint64) * np.uint64(stride)
        positions = positions + along.reshape([-1 if a == axis else 1 for a in range(len(shape))])
        stride *= shape[axis]
    return positions


def _leaf_fingerprint(x: jax.Array) -> np.ndarray:
    """[2] uint64 partial sums (this process's shards) of the bits and position-weighted bits.

    Only replica 0 of each shard counts, so every element is summed exactly once whatever the
    sharding; sums wrap modulo 2^64, of which the low 32 bits are kept.
    """
    total = np.zeros(2, np.uint64)
    shards = x.addressable_shards if isinstance(x, jax.Array) else None
    pieces = ([(np.asarray(s.data), s.index) for s in shards if s.replica_id == 0] if shards is not None
              else [(np.asarray(x), tuple(slice(None) for _ in np.shape(x)))])
    for data, index in pieces:
        bits = _bits(np.ascontiguousarray(data))
        weights = _global_positions(np.shape(x), index) * _POSITION_MULTIPLIER + np.uint64(1)
        with np.errstate(over="ignore"):
            total += np.array([bits.sum(dtype=np.uint64), (bits * weights).sum(dtype=np.uint64)],
                              np.uint64)
    return total


def state_fingerprint(state: dict) -> list[list[int]]:
    """[leaves][2] uint32 checksums of every leaf's bits, independent of sharding.

    Computed on the host from each process's shards (the same bytes orbax copies to the host
    to save), then summed over processes: no compiled program, so it costs no compile time.
    """
    partial = np.stack([_leaf_fingerprint(leaf) for leaf in jax.tree.leaves(state)])
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        with np.errstate(over="ignore"):
            partial = np.asarray(multihost_utils.process_allgather(partial)).sum(0, dtype=np.uint64)
    return (partial & _LOW_32_BITS).astype(np.int64).tolist()


class CheckpointCorruptError(RuntimeError):
    """A checkpoint restored, but not to the bits that were saved (or not to its own step)."""


class CheckpointIncompatibleError(RuntimeError):
    """A checkpoint that the current config cannot continue (another state structure, shapes,
    dtypes or process count); nothing was moved."""


class CheckpointUnavailableError(RuntimeError):
    """Checkpoints that could not be read, for a reason that may pass; nothing was moved."""


# TensorStore reports absl status codes as ValueError("<CODE>: ..."). These may pass on their
# own (or are the environment's fault, not the checkpoint's): retried, never proof of damage.
_TRANSIENT_STATUSES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED",
                       "CANCELLED", "INTERNAL", "UNKNOWN", "PERMISSION_DENIED", "UNAUTHENTICATED")
# orbax's own words when a restore target does not fit what was saved (the metadata check
# below should have refused first; if it did not, this is still not damage).
_ORBAX_MISMATCH = ("tree structures do not match", "is not compatible with the stored shape")
_DATA_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")  # grain's per-process position files
_SHOWN = 3  # differing leaves named per kind in an incompatibility message


def _causes(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        chain.append(error)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return chain


def _is_transient(error: BaseException) -> bool:
    """An I/O failure that a retry may cure: OSError, or a TensorStore status such as UNAVAILABLE."""
    return any(isinstance(e, OSError) or (isinstance(e, ValueError) and
                                          str(e).split(":", 1)[0].strip() in _TRANSIENT_STATUSES)
               for e in _causes(error))


def _is_damage(error: BaseException) -> bool:
    """Proof that the files of the step at hand are damaged: a failed verification, or a decode
    or format error (TensorStore's DATA_LOSS/NOT_FOUND, a JSON decode error are ValueErrors)."""
    if isinstance(error, CheckpointCorruptError):
        return True
    return (isinstance(error, (ValueError, EOFError)) and not _is_transient(error)
            and not any(words in str(error) for words in _ORBAX_MISMATCH))


def _is_checksum_failure(error: BaseException) -> bool:
    """TensorStore's DATA_LOSS: stored bytes failed their checksum (proof of damage, not a
    format this code cannot read)."""
    return any(isinstance(e, ValueError) and str(e).startswith("DATA_LOSS") for e in _causes(error))


def _streams_of(position: Any) -> dict[str, Any]:
    """{stream index: position} of a saved data position: ``data.streams``' format
    ({"streams": {...}}), or a plain grain iterator's, which is stream "0" (one stream,
    read whole by one process)."""
    if isinstance(position, dict) and isinstance(position.get("streams"), dict):
        return dict(position["streams"])
    return {"0": position}


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...] | None, str | None]]:
    """{"opt_state/1/mu/embed_tokens": (shape, dtype name)} for every leaf of a state tree, or
    of orbax's saved metadata of one (a NamedTuple's fields are saved as a dict of the same
    names, so both spell a leaf's path alike)."""
    specs = {}
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = getattr(leaf, "shape", None)
        dtype = getattr(leaf, "dtype", None)
        specs["/".join(_key_name(k) for k in keypath)] = (
            None if shape is None else tuple(shape), None if dtype is None else np.dtype(dtype).name)
    return specs


def _describe(spec: tuple[tuple[int, ...] | None, str | None]) -> str:
    shape, dtype = spec
    return f"{dtype}{list(shape) if shape is not None else '[?]'}"


def _differences(saved: dict, expected: dict) -> str:
    """'' when the trees fit, else one line naming the first differing leaves of each kind."""
    def order(paths):  # parameters first: they say most about which config wrote the state
        return sorted(paths, key=lambda path: (not path.startswith("params/"), path))

    changed = order(path for path in saved.keys() & expected.keys() if saved[path] != expected[path])
    only_saved = order(saved.keys() - expected.keys())
    only_expected = order(expected.keys() - saved.keys())
    parts = []
    if changed:
        parts.append(f"{len(changed)} leaves differ (" + "; ".join(
            f"{path}: saved {_describe(saved[path])}, expected {_describe(expected[path])}"
            for path in changed[:_SHOWN]) + (", ..." if len(changed) > _SHOWN else "") + ")")
    for paths, where in ((only_saved, "only in the checkpoint"), (only_expected, "only in this config")):
        if paths:
            parts.append(f"{len(paths)} leaves {where} ({', '.join(paths[:_SHOWN])}"
                         + (", ..." if len(paths) > _SHOWN else "") + ")")
    return "; ".join(parts)


_OK, _DAMAGED, _UNAVAILABLE, _INCOMPATIBLE, _FAILED = range(5)  # outcomes, by severity


def _severity(error: BaseException | None) -> int:
    if error is None:
        return _OK
    if isinstance(error, CheckpointUnavailableError):
        return _UNAVAILABLE
    if isinstance(error, CheckpointIncompatibleError):
        return _INCOMPATIBLE
    return _DAMAGED if _is_damage(error) else _FAILED


class Checkpointer:
    """Async, keep-N orbax checkpoints of (state, iterator position) with verified restore."""

    def __init__(self, directory: str | os.PathLike, keep: int, async_save: bool = True,
                 log: Callable[[str], None] = _LOG.warning, fingerprint: bool = True,
                 read_attempts: int = 4, retry_backoff_s: float = 1.0):
        """``fingerprint=False`` skips the state checksum on save and restore: it copies every
        shard to the host synchronously, which a pod run (``experiments/glm5_full.py``) does
        not want on its critical path; orbax's own write-then-rename still guards saves.
        ``read_attempts``/``retry_backoff_s``: each read that fails with a transient error is
        tried this many times in all, waiting backoff * 2^k seconds between tries."""
        if read_attempts < 1:
            raise ValueError(f"read_attempts={read_attempts} must be >= 1")
        self.directory = absolute(directory)  # an epath.Path: local, or gs://... as it is
        self.fingerprint = fingerprint
        self.read_attempts = read_attempts
        self.retry_backoff_s = retry_backoff_s
        self._log = log
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._state_handler = ocp.StandardCheckpointHandler()  # reads the saved tree's metadata

    def save(self, step: int, state: TrainState, iterator: grain.DatasetIterator) -> None:
        tree = state.as_dict()
        fingerprint = state_fingerprint(tree) if self.fingerprint else None
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(tree),
            data=grain.checkpoint.CheckpointSave(_IteratorPosition(iterator.get_state())),
            meta=ocp.args.JsonSave({"step": step, "fingerprint": fingerprint}),
        ))

    def restore_latest(self, abstract_state: TrainState, iterator: grain.DatasetIterator
                       ) -> tuple[TrainState, int] | None:
        """The newest step that restores and verifies (the iterator is moved to it), or None
        (no checkpoint, or every one was corrupt and has been moved aside).

        ``abstract_state`` holds jax.ShapeDtypeStruct leaves with the target shardings. Raises
        ``CheckpointIncompatibleError`` or ``CheckpointUnavailableError`` (nothing moved) as
        the module docstring says; only a step proven corrupt is moved.
        """
        expected = _leaf_specs(abstract_state.as_dict())
        steps = sorted(self._collectively(lambda: self._with_retries(
            self.manager.all_steps, f"the list of checkpoints in {self.directory}")), reverse=True)
        unreadable: list[tuple[int, BaseException]] = []  # newer steps whose metadata did not decode
        format_readable = False  # some step's metadata decoded: undecodable ones are damaged
        for step in steps:
            try:
                saved = self._collectively(lambda step=step: self._saved_specs(step))
            except (CheckpointUnavailableError, CheckpointIncompatibleError):
                raise
            except Exception as error:  # classified: damage is kept, the rest raised
                if not _is_damage(error):
                    raise
                if _is_checksum_failure(error):
                    self._set_aside(step, "its metadata fails its checksum", error)
                else:  # damage, or a format this code cannot read: decided by the older steps
                    unreadable.append((step, error))
                continue
            self._check_fits(step, saved, expected)
            format_readable = True
            for bad_step, error in unreadable:
                self._set_aside(bad_step, "its metadata cannot be decoded", error)
            unreadable = []
            try:
                state = self._collectively(lambda step=step: self._with_retries(
                    lambda: self._restore(step, abstract_state, iterator), f"checkpoint step {step}"))
                return state, step
            except (CheckpointUnavailableError, CheckpointIncompatibleError):
                raise
            except Exception as error:  # classified: damage is set aside, the rest raised
                if any(words in str(error) for words in _ORBAX_MISMATCH):
                    raise CheckpointIncompatibleError(
                        f"checkpoint step {step} in {self.directory} does not fit this config's "
                        f"state ({error}); nothing was moved: rerun with the config that wrote "
                        "this workdir, or use a new --workdir") from error
                if not _is_damage(error):
                    raise
                self._set_aside(step, "it is corrupt", error)
        if unreadable and not format_readable:
            listed = "; ".join(f"step {s}: {type(e).__name__}: {str(e)[:200]}" for s, e in unreadable)
            raise CheckpointUnavailableError(
                f"no checkpoint's metadata in {self.directory} can be decoded ({listed}); an "
                "unreadable format is not proof of damage, so nothing was moved: check the orbax "
                "version and the files, move damaged steps aside by hand, or use a new --workdir")
        for bad_step, error in unreadable:
            self._set_aside(bad_step, "its metadata cannot be decoded", error)
        if steps:
            self._log(f"every checkpoint in {self.directory} ({len(steps)} steps) was corrupt and "
                      f"has been moved to {self.directory.parent / CORRUPT_DIR}; starting from step 0")
        return None

    def _with_retries(self, read: Callable[[], _T], what: str) -> _T:
        """``read()``, retried on transient errors; CheckpointUnavailableError when they persist."""
        for attempt in range(1, self.read_attempts + 1):
            try:
                return read()
            except Exception as error:  # only transient errors are retried
                if not _is_transient(error):
                    raise
                if attempt == self.read_attempts:
                    raise CheckpointUnavailableError(
                        f"reading {what} failed {attempt} times ({type(error).__name__}: {error}); "
                        "nothing was moved or truncated: check the filesystem and rerun") from error
                delay = self.retry_backoff_s * 2 ** (attempt - 1)
                self._log(f"reading {what} failed ({type(error).__name__}: {error}); "
                          f"retrying in {delay:.3g} s ({attempt}/{self.read_attempts})")
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _collectively(self, read: Callable[[], _T]) -> _T:
        """``read()`` on every process; when any process failed, every process fails the same way
        (the worst outcome any saw), so all of them move, retry or give up together."""
        try:
            value, error = read(), None
        except Exception as caught:  # noqa: BLE001 - re-raised below, on every process alike
            value, error = None, caught
        own = _severity(error)
        if jax.process_count() == 1:
            agreed = own
        else:
            from jax.experimental import multihost_utils

            agreed = int(np.max(multihost_utils.process_allgather(np.asarray(own, np.int32))))
        if agreed == own:
            if error is not None:
                raise error
            return value
        elsewhere = "another process failed reading this checkpoint"
        if agreed == _DAMAGED:
            raise CheckpointCorruptError(f"{elsewhere}: its files are damaged")
        if agreed == _UNAVAILABLE:
            raise CheckpointUnavailableError(f"{elsewhere} (transient errors persisted); nothing was moved")
        if agreed == _INCOMPATIBLE:
            raise CheckpointIncompatibleError(f"{elsewhere}: it does not fit this config; nothing was moved")
        raise RuntimeError(f"{elsewhere} with an unexpected error (see its log); nothing was moved")

    def _saved_specs(self, step: int) -> dict:
        """The saved state's leaf paths, shapes and dtypes (no array is read)."""
        # The state item's handler read on its own: a manager that has not saved in this
        # process has no handler registered for the item, and its item_metadata is None.
        state = self._with_retries(lambda: self._state_handler.metadata(self.directory / str(step) / "state"),
                                   f"the metadata of checkpoint step {step}")
        if state is None:
            raise ValueError(f"checkpoint step {step} has no metadata for its state item")
        return _leaf_specs(state)

    def _check_fits(self, step: int, saved: dict, expected: dict) -> None:
        differences = _differences(saved, expected)
        if differences:
            raise CheckpointIncompatibleError(
                f"checkpoint step {step} in {self.directory} was written by a run whose state does "
                f"not fit this config's: {differences}. Nothing was moved: rerun with the config "
                "that wrote this workdir (optimizer, model, overrides, dtypes), or use a new --workdir")

    def _saved_position(self, step: int, iterator) -> dict:
        """This process's data position at ``step`` (module docstring: another process count)."""
        data_dir = self.directory / str(step) / "data"
        if not data_dir.is_dir():
            raise CheckpointCorruptError(f"step {step} has no data item")
        files = {(int(m.group(1)), int(m.group(2))): data_dir / m.group(0)
                 for m in map(_DATA_FILE.fullmatch, sorted(p.name for p in data_dir.iterdir())) if m}
        counts = {count for _, count in files}
        if len(counts) != 1 or {index for index, _ in files} != set(range(min(counts))):
            raise CheckpointCorruptError(f"step {step}'s data position files are not one complete "
                                         f"set: {sorted(path.name for path in files.values())}")
        count = counts.pop()
        wanted = _streams_of(iterator.get_state())
        own = files.get((jax.process_index(), count)) if count == jax.process_count() else None
        if own is not None:  # the saving process layout: this process's own file, as grain reads it
            position = json.loads(own.read_text())
            if _streams_of(position).keys() == wanted.keys():
                return position
        streams: dict[str, Any] = {}
        for index in range(count):
            for stream, position in _streams_of(json.loads(files[(index, count)].read_text())).items():
                if streams.setdefault(stream, position) != position:
                    raise CheckpointCorruptError(
                        f"step {step}: the processes that read data stream {stream} saved different positions")
        missing = sorted(wanted.keys() - streams.keys())
        unread = sorted(streams.keys() - wanted.keys()) if jax.process_count() == 1 else []
        if missing or unread:
            raise CheckpointIncompatibleError(
                f"checkpoint step {step} in {self.directory} holds the positions of data streams "
                f"{sorted(streams)} (saved by {count} processes); this process reads streams "
                f"{sorted(wanted)}: data.num_streams (or the batch) changed. Nothing was moved: "
                "rerun with the data config that wrote this workdir, or use a new --workdir")
        if "streams" in iterator.get_state():
            return {"streams": {stream: streams[stream] for stream in wanted}}
        return streams["0"]

    def _restore(self, step: int, abstract_state: TrainState, iterator) -> TrainState:
        position = self._saved_position(step, iterator)  # first: a refusal reads no array
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state.as_dict()),
            meta=ocp.args.JsonRestore(),
        ))
        meta, tree = restored["meta"], restored["state"]
        if meta.get("step") != step or int(tree["step"]) != step:
            raise CheckpointCorruptError(
                f"step mismatch: directory {step}, metadata {meta.get('step')}, state {int(tree['step'])}")
        if meta.get("fingerprint") is not None and state_fingerprint(tree) != meta["fingerprint"]:
            raise CheckpointCorruptError("restored state does not match the saved fingerprint")
        iterator.set_state(position)  # what grain's orbax handler does for a DatasetIterator
        if hasattr(iterator, "start_prefetch"):
            iterator.start_prefetch()
        return TrainState.from_dict(tree)

    def _set_aside(self, step: int, reason: str, error: BaseException) -> None:
        moved_to = self._quarantine(step)
        self._log(f"checkpoint step {step} in {self.directory} is unusable: {reason} "
                  f"({type(error).__name__}: {error}); moved it to {moved_to} and falling back to "
                  "the previous checkpoint")

    def _quarantine(self, step: int) -> epath.Path | None:
        """Move a bad step out of the manager's directory (so a new save may reuse the step).
        Process 0 moves it (``paths.move_tree``: a copy then a delete on an object store); the
        others wait until it has."""
        source = self.directory / str(step)
        target = None
        if jax.process_index() == 0 and source.exists():
            target_root = self.directory.parent / CORRUPT_DIR
            target_root.mkdir(parents=True, exist_ok=True)
            target = target_root / f"{self.directory.name}_{step}"
            index = 0
            while target.exists():
                index += 1
                target = target_root / f"{self.directory.name}_{step}.{index}"
            move_tree(source, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint step {step} set aside")
        self.manager.reload()
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        self._state_handler.close()
