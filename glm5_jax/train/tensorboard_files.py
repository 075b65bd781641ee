"""TensorBoard event files in any workdir ``etils.epath`` reaches, ``gs://`` included.

A local logdir is tensorboardX's own writer, unchanged (a file opened once, appended to and
fsynced on flush). For a URI logdir (``gs://bucket/run/tensorboard``) tensorboardX would use
its own GCS client (``google-cloud-storage``), a second way into the bucket with its own
credentials; instead its writer registry gets a writer that keeps the event file in memory
and writes the whole object through epath at each flush, as tensorboardX's GCS and S3 writers
do (an object cannot be appended to; event files of scalars stay small).
"""

from __future__ import annotations

import io
import threading

from etils import epath

from glm5_jax.paths import as_path, is_local


class _ObjectRecordWriter:
    """The file object tensorboardX's RecordWriter writes an event file through."""

    def __init__(self, path: str):
        self._path = as_path(path)
        self._buffer = io.BytesIO()
        self._lock = threading.Lock()  # tensorboardX also flushes from its writer thread

    def write(self, data: bytes) -> None:
        with self._lock:
            self._buffer.write(data)

    def flush(self) -> None:
        with self._lock:
            self._path.write_bytes(self._buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EpathWriterFactory:
    """tensorboardX's writer-factory interface (``record_writer.register_writer_factory``)."""

    def open(self, path: str) -> _ObjectRecordWriter:
        return _ObjectRecordWriter(path)

    def directory_check(self, path: str) -> None:
        as_path(path).mkdir(parents=True, exist_ok=True)


def summary_writer(logdir: epath.Path, purge_step: int):
    """A tensorboardX ``SummaryWriter`` for ``logdir``, local or a URI."""
    from tensorboardX import SummaryWriter, record_writer

    if not is_local(logdir):
        scheme = str(logdir).split("://", 1)[0]
        record_writer.register_writer_factory(scheme, _EpathWriterFactory())
    return SummaryWriter(str(logdir), purge_step=purge_step)
