"""One builder at a time per data_dir, across processes.

Why: a multi-GPU host runs one training process per device and every one of them
calls `prepare_corpus` at start-up. TFDS builds and tokenizer training are not safe to
run concurrently into the same directory, so the first process to take the lock
builds and the others wait, then find the finished build and reuse it.

The lock is a local file (flock works only there): `<data_dir>/.glm5_data_build.lock` for a
local data_dir; for a data_dir on an object store (`gs://...`) a file in this host's temp
directory named after the data_dir's URI, so the processes of one host still take turns
(the hosts of a job take turns through `build.prepare_once`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from glm5_jax.paths import is_local

LOCK_FILE_NAME = ".glm5_data_build.lock"
REMOTE_LOCK_DIR_NAME = "glm5_data_build_locks"


def build_lock_path(data_dir: str | os.PathLike) -> Path:
    """The local lock file that guards builds into ``data_dir``."""
    if is_local(data_dir):
        return Path(data_dir) / LOCK_FILE_NAME
    digest = hashlib.sha256(os.fspath(data_dir).rstrip("/").encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / REMOTE_LOCK_DIR_NAME / f"{digest}.lock"


@contextlib.contextmanager
def exclusive_build_lock(data_dir: str | os.PathLike) -> Iterator[None]:
    """Holds an exclusive advisory lock on ``build_lock_path(data_dir)``."""
    lock_path = build_lock_path(data_dir)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
