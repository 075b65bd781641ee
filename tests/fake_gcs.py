"""A fake ``gs://`` for tests: buckets are directories under a temp root, reachable only the
ways the code may reach real GCS.

* ``etils.epath``: ``epath.Path("gs://bucket/x")`` is served by a backend that maps it to
  ``<root>/bucket/x``. Like GCS, it refuses append mode (objects cannot be appended to).
* orbax's TensorStore kvstore: the spec orbax builds for a ``gs://`` directory is pointed at
  the same directory (``driver: file``), and buckets report no hierarchical namespace (orbax
  would otherwise ask the GCS API).

Everything else fails on a ``gs://`` string: ``fake_gcs`` puts a *file* named ``gs:`` in the
current directory, so ``open``, ``os`` and ``pathlib`` (which read ``gs://b/x`` as the relative
path ``gs:/b/x``) cannot create or read anything there.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator

from etils.epath import backend as epath_backend
from etils.epath import gpath

PREFIX = "gs://"


class BucketBackend(epath_backend.Backend):
    """epath's backend for ``gs://``: the os backend on ``<root>/<bucket>/<object>``."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self._os = epath_backend.os_backend

    def local(self, path) -> str:
        path = os.fspath(path)
        if not path.startswith(PREFIX):
            raise ValueError(f"not a gs:// path: {path}")
        return str(self.root / path[len(PREFIX):])

    def uri(self, local) -> str:
        return PREFIX + os.path.relpath(os.fspath(local), self.root)

    def open(self, path, mode):
        if "a" in mode or "+" in mode:
            raise OSError(f"GCS objects cannot be appended to or updated in place: {path} ({mode!r})")
        if "w" in mode:  # GCS has no directories: writing an object creates its "parents"
            os.makedirs(os.path.dirname(self.local(path)), exist_ok=True)
        return self._os.open(self.local(path), mode)

    def exists(self, path):
        return self._os.exists(self.local(path))

    def isdir(self, path):
        return self._os.isdir(self.local(path))

    def listdir(self, path):
        return self._os.listdir(self.local(path))

    def glob(self, path):
        return [self.uri(p) for p in self._os.glob(self.local(path))]

    def walk(self, top, *, top_down=True, on_error=None):
        for root, dirs, files in self._os.walk(self.local(top), top_down=top_down, on_error=on_error):
            yield self.uri(root), dirs, files

    def makedirs(self, path, *, exist_ok=False, mode=None):
        self._os.makedirs(self.local(path), exist_ok=exist_ok)

    def mkdir(self, path, *, exist_ok=False, mode=None):
        self._os.mkdir(self.local(path), exist_ok=exist_ok)

    def rmtree(self, path):
        self._os.rmtree(self.local(path))

    def remove(self, path):
        self._os.remove(self.local(path))

    def rename(self, path, dst):
        self._os.rename(self.local(path), self.local(dst))

    def replace(self, path, dst):
        self._os.replace(self.local(path), self.local(dst))

    def copy(self, path, dst, overwrite):
        src = self.local(path) if os.fspath(path).startswith(PREFIX) else os.fspath(path)
        target = self.local(dst) if os.fspath(dst).startswith(PREFIX) else os.fspath(dst)
        self._os.copy(src, target, overwrite=overwrite)

    def stat(self, path):
        return self._os.stat(self.local(path))


@contextlib.contextmanager
def fake_gcs(root: pathlib.Path, monkeypatch, cwd: pathlib.Path) -> Iterator[BucketBackend]:
    """Serve ``gs://`` from ``root`` (see the module docstring) with ``cwd`` as the current
    directory, where a file named ``gs:`` blocks any non-epath use of a ``gs://`` path."""
    from orbax.checkpoint._src.path import gcs_utils

    bucket_backend = BucketBackend(root)
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", bucket_backend)
    # A copy or rename between a local path and gs:// goes to the GCS backend, as with real GCS.
    monkeypatch.setattr(gpath, "_GCS_BACKENDS", gpath._GCS_BACKENDS | {bucket_backend})
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # else epath picks tf.io.gfile
    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs",
                        lambda path: {"driver": "file", "path": bucket_backend.local(path)})
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    (cwd / "gs:").write_text("not a directory: gs:// is reachable only through epath\n")
    monkeypatch.chdir(cwd)
    yield bucket_backend
