"""Which rows (and columns) of the global batch this process loads, read off the batch sharding.

A batch [rows, seq] shards its rows over data x fsdp x expert and its columns over context.
A process must hand ``jax.make_array_from_process_local_data`` exactly the region its
addressable devices hold. When the context or tensor axis crosses processes, several
processes hold the *same* rows and must load the same rows. ``process_region`` finds this
process's row range (its row group is ``start // size``, of ``rows // size`` groups) and
column range; the loader (``glm5_jax/data/streams.py``) reads the streams those rows come
from, so processes holding the same rows read the same data.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Sharding
from glm5_jax.errors import UserError


class BatchLayoutError(UserError):
    """This process's devices do not hold one contiguous block of the batch."""


@dataclasses.dataclass(frozen=True)
class ProcessRegion:
    rows: slice  # of the global batch's rows
    columns: slice  # of its sequence positions
    batch_rows: int  # rows in the global batch

    @property
    def groups(self) -> int:
        """How many distinct row groups the batch has (processes with the same rows share one)."""
        return self.batch_rows // (self.rows.stop - self.rows.start)

    @property
    def group(self) -> int:
        """Which row group this process holds."""
        return self.rows.start // (self.rows.stop - self.rows.start)

    def take(self, local_rows: np.ndarray) -> np.ndarray:
        """This process's part of its row group's batch [rows in group, seq]."""
        return local_rows[:, self.columns]


def _span(slices: list[slice], length: int, what: str) -> slice:
    """The union of index slices as one contiguous slice (error if it has holes)."""
    ranges = sorted({s.indices(length)[:2] for s in slices})
    start, stop = ranges[0][0], ranges[0][1]
    for lo, hi in ranges[1:]:
        if lo > stop:
            raise BatchLayoutError(
                f"this process's devices hold {what} {ranges}, not one contiguous block; "
                "order the mesh so each process's devices are adjacent along the batch axes")
        stop = max(stop, hi)
    return slice(start, stop)


def process_region(sharding: Sharding, global_shape: tuple[int, int]) -> ProcessRegion:
    """The block of the global batch [rows, seq] that this process's devices hold."""
    rows, seq = global_shape
    indices = list(sharding.addressable_devices_indices_map(global_shape).values())
    row_span = _span([index[0] for index in indices], rows, "rows")
    column_span = _span([index[1] for index in indices], seq, "columns")
    size = row_span.stop - row_span.start
    if rows % size or row_span.start % size:
        raise BatchLayoutError(f"rows {row_span.start}:{row_span.stop} of {rows} do not tile the batch")
    return ProcessRegion(row_span, column_span, rows)


def global_batch_array(sharding: Sharding, region: ProcessRegion, local_rows: np.ndarray,
                       global_shape: tuple[int, int]) -> jax.Array:
    """The global batch array from this process's row group's rows."""
    return jax.make_array_from_process_local_data(sharding, region.take(local_rows), global_shape)
