"""What one table's run knows: its name, scale, workdir, experiment file and spec.

Every table module's ``build(context)`` gets one; it runs the table's sweep points under
``context.points_dir`` (one workdir per row, through ``glm5_jax.sweep``), measures them, and
returns the table (``table_files.Table``).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections

from glm5_jax.reproduce.load_monitor import LoadMonitor


@dataclasses.dataclass
class Context:
    name: str  # the table's name (cost, long_context, ...)
    scale: str  # smoke | cpu | pod
    workdir: Path
    experiment: str  # experiments/paper/<name>.py, relative to the repository
    spec: ml_collections.ConfigDict  # get_table(scale), with --table.* assignments applied
    table_assignments: tuple[str, ...] = ()
    run_planner: bool = False  # pod: compile each row with glm5_jax.plan
    parallel: int = 1  # sweep points trained at once
    echo: Callable[[str], None] = print
    load: LoadMonitor | None = None  # samples the host's load while the table runs

    @property
    def config_argument(self) -> str:
        """What ``--config=`` takes: ``experiments/paper/cost.py:cpu``."""
        return f"{self.experiment}:{self.scale}"

    @property
    def command(self) -> str:
        """The command that reproduces this table."""
        extra = "".join(f" --table.{a}" for a in self.table_assignments)
        plan = " --plan" if self.run_planner else ""
        return (f"python -m glm5_jax.reproduce {self.name} --scale={self.scale} "
                f"--workdir={self.workdir}{plan}{extra}")

    def provenance(self, started: float, commit: str | None) -> dict[str, Any]:
        """Where the table's numbers come from and what the machine was doing."""
        return {"experiment": self.config_argument, "command": self.command,
                "commit": commit, "started": _iso(started), "finished": _iso(time.time()),
                "wall_s": round(time.time() - started, 1), "cpu_s": _cpu_seconds(),
                "load_average_1min": self.load.summary() if self.load else None,
                "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                "machine": platform.machine()}


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the sweep's
    training processes): the table's cost on this host, whatever else was running."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 1)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))
