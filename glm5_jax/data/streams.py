"""The global batch assembled from ``num_streams`` document streams, so a run's data depends
on its config and never on how many processes read it.

Stream s reads the s-th stride of the corpus (``shard_index=s, shard_count=num_streams``)
and fills rows [s * k, (s + 1) * k) of every global batch, k = batch_size / num_streams. A
process whose devices hold rows [start, stop) reads only the streams those rows come from
and keeps its rows. One process reading every stream and eight processes reading one each
see the same global batches, so a 2 x 4 job equals a 1 x 8 run loss for loss, and a run
resumes on another process count with the same data. At scale, set ``data.num_streams``
to the number of hosts (or a multiple) so each host tokenizes only its own share.

The position of each stream is checkpointed by stream index, not by process (``get_state``
/ ``set_state``: the interface grain's orbax handler calls).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import grain
import numpy as np

from glm5_jax.data.config import DataConfig
from glm5_jax.data.pipeline import PreparedCorpus, make_train_iterator


class StreamRowsIterator:
    """Rows [start, stop) of every global batch, from the streams that hold them."""

    def __init__(self, streams: dict[int, grain.DatasetIterator], offset: int, rows: int):
        self._streams = streams  # stream index -> its iterator, in row order
        self._offset, self._rows = offset, rows

    def __iter__(self) -> "StreamRowsIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batches = [next(iterator) for iterator in self._streams.values()]
        return {key: np.concatenate([b[key] for b in batches])[self._offset:self._offset + self._rows]
                for key in batches[0]}

    def get_state(self) -> dict[str, Any]:
        return {"streams": {str(index): it.get_state() for index, it in self._streams.items()}}

    def set_state(self, state: dict[str, Any] | bytes) -> None:
        if isinstance(state, (bytes, str)):
            state = json.loads(state)
        for index, iterator in self._streams.items():
            iterator.set_state(state["streams"][str(index)])

    def start_prefetch(self) -> None:
        for iterator in self._streams.values():
            if hasattr(iterator, "start_prefetch"):
                iterator.start_prefetch()


def stream_rows_iterator(config: DataConfig, prepared: PreparedCorpus, rows: slice):
    """An iterator of this process's rows [rows] of the global batches, from
    ``config.num_streams`` streams; with one stream and every row, the plain grain iterator
    (and its checkpoint format)."""
    num_streams = config.num_streams
    if config.batch_size % num_streams:
        raise ValueError(f"batch_size={config.batch_size} must divide by data.num_streams={num_streams}")
    per_stream = config.batch_size // num_streams
    first, last = rows.start // per_stream, (rows.stop - 1) // per_stream
    streams = {s: make_train_iterator(dataclasses.replace(config, shard_index=s, shard_count=num_streams),
                                      prepared)
               for s in range(first, last + 1)}
    if num_streams == 1 and rows.start == 0 and rows.stop == config.batch_size:
        return streams[0]
    return StreamRowsIterator(streams, rows.start - first * per_stream, rows.stop - rows.start)
