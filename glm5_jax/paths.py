"""Run paths (workdirs, data, checkpoints) as ``etils.epath`` paths: local disk or ``gs://``.

Every file a run writes or reads in its workdir, its data_dir or a sweep directory goes
through ``epath.Path``, so ``--workdir=gs://bucket/run`` works on hosts that see the bucket
only through the GCS API (epath reaches it with ``gcsfs`` or ``tensorflow``; orbax reaches
checkpoint arrays with TensorStore's own GCS driver). Paths that are local by nature (the
code, an experiment file, the sandbox, lock files, the XLA compile cache) stay ``pathlib``.

Three things differ between local disks and object stores, and are decided here:

* atomic replacement: locally a file is written beside its target and renamed over it (a
  crash leaves the old or the new file, never half of one); a single object write is already
  atomic on GCS, and an object store has no atomic rename, so there the object is written
  directly;
* appending: a local file is opened in append mode; an object cannot be appended to, so
  the object is rewritten whole (metrics files are small);
* moving a directory: ``shutil.move`` locally; an object store has no directories to rename,
  so every object is copied and then the source deleted.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
from collections.abc import Iterator

from etils import epath

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def as_path(path: str | os.PathLike) -> epath.Path:
    """``path`` as an ``epath.Path`` (``gs://...`` stays a URI; a local path stays as given)."""
    return epath.Path(path)


def is_local(path: str | os.PathLike) -> bool:
    """True for a path on this machine's filesystem, False for a URI such as ``gs://b/x``."""
    return not _URI.match(os.fspath(path))


def absolute(path: str | os.PathLike) -> epath.Path:
    """A local path made absolute (``os.path.abspath``); a URI as it is (already absolute:
    ``epath.Path("gs://b").absolute()`` would turn it into a local path)."""
    return as_path(os.path.abspath(path)) if is_local(path) else as_path(path)


def resolved(path: str | os.PathLike) -> epath.Path:
    """A local path with its symlinks resolved (``pathlib.Path.resolve``); a URI as it is."""
    return as_path(pathlib.Path(path).resolve()) if is_local(path) else as_path(path)


def write_text_atomic(path: epath.Path, text: str) -> None:
    """Replace ``path``'s contents with ``text`` so that a reader (or a crash) sees the old or
    the new contents, never a mix: locally ``<name>.partial`` renamed over it; on an object
    store one object write."""
    if is_local(path):
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        os.replace(partial, path)
    else:
        path.write_text(text)


def append_text(path: epath.Path, text: str, fsync: bool = False) -> None:
    """Add ``text`` at the end of ``path`` (created if absent): locally in append mode
    (``fsync``: flushed to disk before returning); on an object store the object is
    rewritten with the text added (objects cannot be appended to)."""
    if is_local(path):
        with open(path, "a") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    else:
        path.write_text((path.read_text() if path.exists() else "") + text)


def files_under(directory: epath.Path) -> Iterator[epath.Path]:
    """Every file below ``directory``, listed directory by directory (epath has no recursive
    glob on object stores, and its fsspec ``walk`` names directories without their scheme)."""
    for entry in directory.iterdir():
        if entry.is_dir():
            yield from files_under(entry)
        else:
            yield entry


def move_tree(source: epath.Path, target: epath.Path) -> None:
    """Move the directory ``source`` to ``target`` (which must not exist)."""
    if is_local(source) and is_local(target):
        shutil.move(os.fspath(source), os.fspath(target))
        return
    for path in files_under(source):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        path.copy(destination)
    source.rmtree()
