"""A learner of several JAX processes (hosts): what only process 0 does, and what they share.

Every learner process holds its shards of the train state, runs the same compiled step and
streams its own shards to the workers. Process 0 alone runs the rollout workers, the buffer,
the metrics and the files; each step it builds the batch and ``share_batch`` gives every
process the same one (one broadcast; batches are small next to the weights). With one
process all of this is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from glm5_jax.distributed import barrier
from glm5_jax.rl.batching import BATCH_KEYS, INTEGER_KEYS


def is_main_process() -> bool:
    return jax.process_index() == 0


def share_batch(batch: dict[str, np.ndarray] | None, config: ml_collections.ConfigDict
                ) -> dict[str, np.ndarray]:
    """Process 0's batch on every learner process (the others pass None)."""
    if jax.process_count() == 1:
        return batch
    from jax.experimental import multihost_utils

    if batch is None:
        rows = config.groups_per_batch * config.group_size
        batch = {k: np.zeros((rows, config.seq_len), np.int32 if k in INTEGER_KEYS else np.float32)
                 for k in BATCH_KEYS}
    shared = multihost_utils.broadcast_one_to_all({k: batch[k] for k in BATCH_KEYS})
    return {k: np.asarray(v) for k, v in shared.items()}


def in_turn(compute: Callable[[], Any], what: str) -> Any:
    """``compute`` on process 0 first, then on the others: for work that fills a cache (the
    warm start), so they read what process 0 wrote rather than write the same file at once."""
    if jax.process_count() == 1:
        return compute()
    result = compute() if is_main_process() else None
    barrier(what)  # not a collective: process 0's share may take longer than gloo waits
    return result if is_main_process() else compute()


def weight_sync_totals(metrics: dict[str, float]) -> dict[str, float]:
    """The sender's metrics for the whole learner: bytes summed over its processes (each sends
    its own shards), seconds the slowest's (a collective with several processes)."""
    if jax.process_count() == 1:
        return metrics
    from jax.experimental import multihost_utils

    mine = np.asarray([metrics.get("weight_sync_bytes", 0.0), metrics.get("weight_sync_seconds", 0.0)])
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), 2)
    return {**metrics, "weight_sync_bytes": float(every[:, 0].sum()),
            "weight_sync_seconds": float(every[:, 1].max()),
            "weight_sync/bytes_by_process": [float(b) for b in every[:, 0]]}


def host_tree(variables: Any) -> Any:
    """The whole tree as numpy on this process (a collective with several processes)."""
    if jax.process_count() == 1:
        return jax.device_get(variables)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(variables, tiled=True)
