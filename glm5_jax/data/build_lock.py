"""One builder at a time per data_dir, across processes.

Why: a multi-GPU host runs one training process per device and every one of them
calls `prepare_corpus` at start-up. TFDS builds and tokenizer training are not safe to
run concurrently into the same directory, so the first process to take the lock
builds and the others wait, then find the finished build and reuse it.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE_NAME = ".glm5_data_build.lock"


@contextlib.contextmanager
def exclusive_build_lock(data_dir: str | Path) -> Iterator[None]:
    """Holds an exclusive advisory lock on `<data_dir>/.glm5_data_build.lock`."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / LOCK_FILE_NAME).open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
