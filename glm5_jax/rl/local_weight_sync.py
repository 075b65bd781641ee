"""Weight sync inside one process: the learner's mesh and a rollout mesh on other devices of
the same process, weights resharded device to device by ``jax.device_put`` (no host copy, no
socket). Used when one JAX process drives both (a single host whose accelerators are split
between learning and sampling); across processes see ``weight_sender`` / ``weight_receiver``.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

from glm5_jax.rl.staged_policy import StagedPolicy
from glm5_jax.rl.weight_shards import (
    ShardingFor,
    flatten_dict_tree,
    unflatten_dict_tree,
)


def reshard(variables: Any, sharding_for: ShardingFor) -> dict[str, Any]:
    """A copy of ``variables`` laid out by ``sharding_for`` (one batched ``device_put``; always
    a copy, so the learner may donate its own buffers afterwards)."""
    items = list(flatten_dict_tree(variables))
    targets = [sharding_for(path, tuple(leaf.shape)) for path, leaf in items]
    moved = jax.device_put([leaf for _, leaf in items], targets, may_alias=False)
    # device_put may hand a target replica the source's own buffer when their devices overlap
    # (even with may_alias=False); copy those on their target devices.
    moved = [jnp.copy(new) if isinstance(leaf, jax.Array) and set(leaf.devices()) & set(new.devices())
             else new for (_, leaf), new in zip(items, moved)]
    return unflatten_dict_tree([(path, leaf) for (path, _), leaf in zip(items, moved)])


class InProcessPolicy(StagedPolicy):
    """The ``Policy`` of a rollout running in the learner's process on its own mesh: the
    learner ``push``es, the rollout ``refresh``es (one attribute read when nothing is new)."""

    def __init__(self, sharding_for: ShardingFor) -> None:
        super().__init__()
        self.sharding_for = sharding_for

    def push(self, version: int, variables: Any) -> float:
        """Reshard ``variables`` onto this policy's devices and stage them; returns seconds."""
        start = time.perf_counter()
        moved = reshard(variables, self.sharding_for)
        jax.block_until_ready(moved)
        self._staged = (version, moved)
        seconds = time.perf_counter() - start
        self.load_seconds += seconds
        return seconds
