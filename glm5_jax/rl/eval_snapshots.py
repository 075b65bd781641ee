"""The weights the fixed evaluation scores, kept by the loop at step 0 and every ``eval.every``
steps (``glm5_jax.rl.evaluation`` reads them after the run).

These are the only weight files an RL run writes besides its checkpoints: the workers receive
their weights over the weight-sync sockets, never from here. Writing one costs a host copy of
the model at evaluation steps only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flax import serialization

from glm5_jax.rl.evaluation import SNAPSHOTS, keep_snapshot
from glm5_jax.rl.learner_processes import host_tree, is_main_process


def write_eval_snapshot(workdir: str | os.PathLike, variables: Any, step: int, policy_version: int,
                        wall_time: float, samples: int) -> None:
    """Every learner process calls it (the weights are gathered); process 0 writes."""
    host = host_tree(variables)
    if not is_main_process():
        return
    directory = Path(workdir) / SNAPSHOTS
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".step_{step}.{os.getpid()}.tmp"
    temporary.write_bytes(serialization.msgpack_serialize(host))
    try:
        keep_snapshot(workdir, temporary, step, policy_version, wall_time, samples)
    finally:
        temporary.unlink(missing_ok=True)
