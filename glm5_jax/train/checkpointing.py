"""Orbax checkpoints of the whole run: state, data-iterator position, and a fingerprint.

Each checkpoint step directory holds three items:

* ``state``: the TrainState (params, optimizer state, routing biases, RNG, counters), saved
  asynchronously; restored straight into the shardings of the *current* mesh, so a run saved
  on one device resumes on eight and back;
* ``data``: the grain iterator's position, one small JSON file per process;
* ``meta``: the step and a fingerprint of the state, a position-weighted uint32 checksum of
  every leaf's bits. Integer sums are exact in any order, so the fingerprint does not depend
  on how the state is sharded, and a restore that reads different bits (a truncated or
  damaged file that the storage layer did not notice) is caught. It is computed on the host
  from the shards, not compiled (a jitted checksum of ~100 leaves costs ~30 s to compile
  on CPU, per mesh).

Orbax writes a step into a temporary directory and renames it when complete, so a save cut
off (even by kill -9) leaves no step behind. A step that exists but fails to restore or to
verify is reported, moved to ``<workdir>/corrupt_checkpoints/``, and the previous step is used.

Why the iterator state is copied at save time: the save of a non-array item may run after
``save`` returns, when the loop has already drawn the next batch; a snapshot taken in the
loop is the position that belongs to the saved step.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from glm5_jax.train.train_state import TrainState

CORRUPT_DIR = "corrupt_checkpoints"
_LOG = logging.getLogger("glm5_jax.train")


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
    """A checkpoint restored, but not to the bits that were saved."""


class Checkpointer:
    """Async, keep-N orbax checkpoints of (state, iterator position) with verified restore."""

    def __init__(self, directory: str | Path, keep: int, async_save: bool = True,
                 log: Callable[[str], None] = _LOG.warning, fingerprint: bool = True):
        """``fingerprint=False`` skips the state checksum on save and restore: it copies every
        shard to the host synchronously, which a pod run (``experiments/glm5_full.py``) does
        not want on its critical path; orbax's own write-then-rename still guards saves."""
        self.directory = Path(directory).absolute()
        self.fingerprint = fingerprint
        self._log = log
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

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
        """The newest step that restores and verifies (the iterator is moved to it), or None.

        ``abstract_state`` holds jax.ShapeDtypeStruct leaves with the target shardings.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return self._restore(step, abstract_state, iterator), step
            except Exception as error:  # noqa: BLE001 - any failure means "use an older one"
                moved_to = self._quarantine(step)
                self._log(f"checkpoint step {step} in {self.directory} is unusable "
                          f"({type(error).__name__}: {error}); moved it to {moved_to} and "
                          "falling back to the previous checkpoint")
        return None

    def _restore(self, step: int, abstract_state: TrainState, iterator) -> TrainState:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state.as_dict()),
            data=grain.checkpoint.CheckpointRestore(iterator),
            meta=ocp.args.JsonRestore(),
        ))
        meta, tree = restored["meta"], restored["state"]
        if meta.get("step") != step or int(tree["step"]) != step:
            raise CheckpointCorruptError(
                f"step mismatch: directory {step}, metadata {meta.get('step')}, state {int(tree['step'])}")
        if meta.get("fingerprint") is not None and state_fingerprint(tree) != meta["fingerprint"]:
            raise CheckpointCorruptError("restored state does not match the saved fingerprint")
        return TrainState.from_dict(tree)

    def _quarantine(self, step: int) -> Path | None:
        """Move a bad step out of the manager's directory (so a new save may reuse the step)."""
        source = self.directory / str(step)
        if jax.process_index() != 0 or not source.exists():
            self.manager.reload()
            return None
        target_root = self.directory.parent / CORRUPT_DIR
        target_root.mkdir(parents=True, exist_ok=True)
        target = target_root / f"{self.directory.name}_{step}"
        index = 0
        while target.exists():
            index += 1
            target = target_root / f"{self.directory.name}_{step}.{index}"
        shutil.move(str(source), str(target))
        self.manager.reload()
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
