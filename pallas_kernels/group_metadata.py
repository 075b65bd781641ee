"""Visit lists that turn a ragged grouped matmul into a fixed-size grid.

Why: the kernel grid must have a static size, but which (row tile, group) pairs carry
work depends on ``group_sizes`` at run time. Following megablox, the rows are split into
*segments* (contiguous row ranges with one weight matrix each) and every segment visits
each row tile it overlaps. A tile shared by two segments is visited twice, once per
segment, and each visit writes only its own rows. Since segments are contiguous and
sorted, the number of visits is at most ``num_tiles + num_segments - 1``, which is the
static grid size; the few unused trailing visits repeat the last real one (so no new
blocks are fetched) and are skipped by the kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Visits(NamedTuple):
    """Per-visit metadata, each int32 [num_visits_bound] unless noted."""

    tile: jax.Array  # row tile the visit reads/writes
    group: jax.Array  # local weight group (always a valid index into rhs)
    row_start: jax.Array  # segment rows are [row_start, row_end)
    row_end: jax.Array
    compute: jax.Array  # 1 when the visit multiplies, 0 when it only writes zeros
    num_visits: jax.Array  # int32 [1]: how many leading visits are real


def _visits(
    seg_start: jax.Array,  # [num_segments]
    seg_end: jax.Array,  # [num_segments]
    seg_group: jax.Array,  # [num_segments] local group of each segment
    seg_compute: jax.Array,  # [num_segments] bool
    *,
    block_m: int,
    num_tiles: int,
    visit_empty: bool,
) -> Visits:
    num_segments = seg_start.shape[0]
    bound = num_tiles + num_segments - 1
    size = seg_end - seg_start
    first_tile = jnp.clip(seg_start // block_m, 0, num_tiles - 1)
    last_tile = jnp.clip((seg_end - 1) // block_m, 0, num_tiles - 1)
    tiles_per_segment = jnp.where(size > 0, last_tile - first_tile + 1, int(visit_empty))
    total = jnp.sum(tiles_per_segment)
    first_visit = jnp.cumsum(tiles_per_segment) - tiles_per_segment

    visit = jnp.arange(bound, dtype=jnp.int32)
    segment = jnp.repeat(
        jnp.arange(num_segments, dtype=jnp.int32), tiles_per_segment, total_repeat_length=bound
    )
    tile = first_tile[segment] + visit - first_visit[segment]
    # Trailing unused visits copy the last real one.
    last = jnp.maximum(total - 1, 0)
    real = visit < total
    segment = jnp.where(real, segment, segment[last])
    tile = jnp.clip(jnp.where(real, tile, tile[last]), 0, num_tiles - 1)
    compute = real & seg_compute[segment] & (size[segment] > 0)
    return Visits(
        tile=tile.astype(jnp.int32),
        group=seg_group[segment].astype(jnp.int32),
        row_start=seg_start[segment].astype(jnp.int32),
        row_end=seg_end[segment].astype(jnp.int32),
        compute=compute.astype(jnp.int32),
        num_visits=jnp.reshape(total, (1,)).astype(jnp.int32),
    )


def local_group_bounds(
    group_sizes: jax.Array, group_offset: jax.Array | int, num_local: int, num_rows: int
) -> tuple[jax.Array, jax.Array]:
    """Row [start, end) of each local group, clipped to the real rows."""
    ends = jnp.cumsum(group_sizes.astype(jnp.int32))
    starts = ends - group_sizes.astype(jnp.int32)
    offset = jnp.asarray(group_offset, jnp.int32)
    local_start = jax.lax.dynamic_slice_in_dim(starts, offset, num_local)
    local_end = jax.lax.dynamic_slice_in_dim(ends, offset, num_local)
    return jnp.clip(local_start, 0, num_rows), jnp.clip(local_end, 0, num_rows)


def forward_visits(
    group_sizes: jax.Array,
    group_offset: jax.Array | int,
    *,
    num_local: int,
    num_rows: int,
    block_m: int,
    num_tiles: int,
) -> Visits:
    """Visits for ``out = lhs @ rhs[group]``: every padded row belongs to one segment.

    Segments are [rows before the local groups], the local groups, [rows after them,
    including rows beyond sum(group_sizes) and tile padding]; the two outer segments only
    write zeros, so every output row is written exactly once.
    """
    local_start, local_end = local_group_bounds(group_sizes, group_offset, num_local, num_rows)
    padded_rows = num_tiles * block_m
    before_end = local_start[:1]
    after_start = local_end[-1:]
    seg_start = jnp.concatenate([jnp.zeros((1,), jnp.int32), local_start, after_start])
    seg_end = jnp.concatenate([before_end, local_end, jnp.full((1,), padded_rows, jnp.int32)])
    seg_group = jnp.concatenate(
        [jnp.zeros((1,), jnp.int32), jnp.arange(num_local, dtype=jnp.int32),
         jnp.full((1,), num_local - 1, jnp.int32)]
    )
    seg_compute = jnp.concatenate(
        [jnp.zeros((1,), bool), jnp.ones((num_local,), bool), jnp.zeros((1,), bool)]
    )
    return _visits(
        seg_start, seg_end, seg_group, seg_compute,
        block_m=block_m, num_tiles=num_tiles, visit_empty=False,
    )


def weight_grad_visits(
    group_sizes: jax.Array,
    group_offset: jax.Array | int,
    *,
    num_local: int,
    num_rows: int,
    block_m: int,
    num_tiles: int,
) -> Visits:
    """Visits for ``d_rhs[group] = lhs[rows]^T @ d_out[rows]``: one segment per local group.

    Empty groups still get one (non-computing) visit so their gradient block is written
    as zeros.
    """
    local_start, local_end = local_group_bounds(group_sizes, group_offset, num_local, num_rows)
    return _visits(
        local_start, local_end,
        jnp.arange(num_local, dtype=jnp.int32), jnp.ones((num_local,), bool),
        block_m=block_m, num_tiles=num_tiles, visit_empty=True,
    )
