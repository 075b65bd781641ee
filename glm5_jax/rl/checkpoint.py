"""Orbax checkpoints of an RL run: learner state plus the run's accounting.

``state`` is the LearnerState (params, optimizer state, routing biases, reference weights);
``run`` is JSON: the loop step, policy version, elapsed wall time and the buffer's accounting
and buffered samples. Episodes that were running on workers at save time died with them; on
resume they are counted as lost, so ``generated = consumed + dropped + buffered`` and
``dispatched = generated + lost + running`` still hold across the restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from glm5_jax.rl.learner import LearnerState


class RunCheckpointer:
    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def save(self, step: int, state: LearnerState, run: dict[str, Any]) -> None:
        tree = {name: getattr(state, name) for name in state.__dataclass_fields__}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                        run=ocp.args.JsonSave(run)))
        self.manager.wait_until_finished()

    def restore_latest(self, like: LearnerState) -> tuple[LearnerState, dict[str, Any]] | None:
        step = self.manager.latest_step()
        if step is None:
            return None
        abstract = {name: jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), getattr(like, name))
            for name in like.__dataclass_fields__}
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), run=ocp.args.JsonRestore()))
        return LearnerState(**restored["state"]), restored["run"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
