"""The policy network of an RL run and how its weights travel from learner to workers.

Weights are published as versioned files: ``<dir>/policy_v<N>.msgpack`` written to a temporary
name and renamed (so a reader never sees half a file), then ``<dir>/LATEST`` is replaced the
same way. Workers poll ``LATEST`` between episodes (or between turns) and load a newer version
when there is one. Files work for processes on one host and for hosts sharing a filesystem;
they also survive a worker being killed mid-read, which a shared-memory handoff would not.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import serialization

from glm5_jax.config import ModelConfig, get_preset
from glm5_jax.config_fields import set_fields

LATEST = "LATEST"
KEEP_VERSIONS = 4  # a worker reading version N must not find it deleted under it


def policy_model_config(config: ml_collections.ConfigDict, vocab_size: int, bos_id: int,
                        eos_id: int, pad_id: int) -> ModelConfig:
    """The policy's architecture with the tokenizer's special ids: the preset named by
    ``config.model`` sized to the tokenizer's vocabulary, or, with ``config.init_from``, the
    checkpoint's own config (its vocabulary must hold every id the tokenizer makes)."""
    overrides = set_fields(config.get("model_overrides"))
    special = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    if config.get("init_from"):
        from glm5_jax.sample.checkpoint import load_model_config

        base = load_model_config(config.init_from)
        if vocab_size > base.vocab_size:
            raise ValueError(f"the tokenizer has {vocab_size} ids but init_from={config.init_from!r} "
                             f"embeds {base.vocab_size}: is it the checkpoint's own tokenizer?")
        return base.replace(**special, **overrides)
    return get_preset(config.model).replace(vocab_size=vocab_size, **special, **overrides)


def _version_path(directory: Path, version: int) -> Path:
    return directory / f"policy_v{version}.msgpack"


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


class PolicyPublisher:
    """Learner side: write a version, point LATEST at it, prune old versions."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_of(self, version: int) -> Path:
        return _version_path(self.directory, version)

    def publish(self, version: int, variables: dict[str, Any]) -> dict[str, float]:
        """Returns the cost of the push: seconds to fetch, serialise, write; bytes written."""
        start = time.perf_counter()
        host = jax.device_get(variables)
        fetched = time.perf_counter()
        data = serialization.msgpack_serialize(host)
        serialised = time.perf_counter()
        _atomic_write(_version_path(self.directory, version), data)
        _atomic_write(self.directory / LATEST, str(version).encode())
        for old in self.directory.glob("policy_v*.msgpack"):
            old_version = int(old.stem.removeprefix("policy_v"))
            if old_version <= version - KEEP_VERSIONS:
                old.unlink(missing_ok=True)
        done = time.perf_counter()
        return {"push/device_get_s": fetched - start, "push/serialise_s": serialised - fetched,
                "push/write_s": done - serialised, "push/total_s": done - start,
                "push/bytes": float(len(data))}


def latest_version(directory: str | os.PathLike) -> int | None:
    try:
        return int((Path(directory) / LATEST).read_text())
    except (FileNotFoundError, ValueError):
        return None


class PolicySubscriber:
    """Worker side: the newest published weights, as numpy trees, with their version."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.version: int | None = None
        self.variables: dict[str, Any] | None = None
        self.load_seconds = 0.0  # total time spent loading pushes (a cost of weight sync)

    def refresh(self) -> bool:
        """Load a newer version if one is published; True if the weights changed."""
        newest = latest_version(self.directory)
        if newest is None or newest == self.version:
            return False
        start = time.perf_counter()
        try:
            data = _version_path(self.directory, newest).read_bytes()
        except FileNotFoundError:  # pruned between reading LATEST and the file: try next time
            return False
        restored = serialization.msgpack_restore(data)
        self.variables = jax.tree.map(np.asarray, restored)
        self.version = newest
        self.load_seconds += time.perf_counter() - start
        return True

    def wait_for_first(self, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.refresh():
            if self.version is not None:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no policy published in {self.directory} after {timeout_s}s")
            time.sleep(0.05)
