"""The rollout's side of weights that arrive in the background.

Whatever carries a version in (a device-to-device reshard in the learner's process, shards
over sockets from the learner's processes), it stages the version whole; the rollout calls
``refresh()`` between decode steps and takes the staged version if it is new. When nothing
arrived, ``refresh()`` is one attribute read.
"""

from __future__ import annotations

from typing import Any


class StagedPolicy:
    """A ``Policy`` (``version``, ``variables``, ``refresh()``) fed by ``_staged``."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.variables: dict[str, Any] | None = None
        self.load_seconds = 0.0  # time spent bringing versions in (a cost of weight sync)
        self._staged: tuple[int, dict[str, Any]] | None = None

    def refresh(self) -> bool:
        """Take the newest staged version if it is not the one in use; True if it changed."""
        staged = self._staged
        if staged is None or staged[0] == self.version:
            return False
        self.version, self.variables = staged
        return True
