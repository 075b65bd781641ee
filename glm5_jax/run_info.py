"""``<workdir>/run_info.json``: what ran, where, and from which code.

Written by process 0 of every entry point when a run starts, so a result can always be
traced to its process and device counts, its mesh, the jax version, the git commit and
the command line. A resumed run rewrites it and keeps the earlier starts in ``history``.
The workdir may be ``gs://...`` (read and written through ``etils.epath``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax

from glm5_jax.errors import UserError
from glm5_jax.paths import as_path

RUN_INFO_FILE = "run_info.json"
_REPO = Path(__file__).resolve().parents[1]  # the code: always local


def git_commit() -> str | None:
    """The checkout's HEAD (with "-dirty" when it has uncommitted changes), or None."""
    try:
        head = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def describe(mesh: jax.sharding.Mesh | None = None, **extra: Any) -> dict[str, Any]:
    devices = jax.devices()
    info = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "process_count": jax.process_count(),
        "device_count": len(devices),
        "local_device_count": jax.local_device_count(),
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "jax_version": jax.__version__,
        "git_commit": git_commit(),
        "command_line": [sys.executable, *sys.argv],
    }
    if mesh is not None:
        info["mesh"] = {name: int(size) for name, size in mesh.shape.items()}
    info.update(extra)
    return info


def write_run_info(workdir: str | os.PathLike, info: dict[str, Any]) -> None:
    """Process 0 writes the file; earlier starts of the same workdir go to ``history``."""
    if jax.process_index() != 0:
        return
    path = as_path(workdir) / RUN_INFO_FILE
    history = []
    if path.exists():
        try:
            previous = json.loads(path.read_text())
            history = previous.pop("history", []) + [previous]
        except (OSError, json.JSONDecodeError):
            history = []
    path.write_text(json.dumps({**info, "history": history}, indent=1) + "\n")


def check_same_experiment(workdir: str | os.PathLike, experiment: str | None) -> None:
    """A workdir belongs to one experiment: resuming it with another is an error (exit 2),
    not a silent mix of two runs' checkpoints and metrics."""
    path = as_path(workdir) / RUN_INFO_FILE
    if experiment is None or not path.exists():
        return
    try:
        previous = json.loads(path.read_text()).get("experiment")
    except (OSError, json.JSONDecodeError):
        return
    if previous is not None and previous != experiment:
        raise UserError(f"--workdir={workdir} holds a run of experiment {previous!r}, not "
                        f"{experiment!r}: use another --workdir (or rerun {previous!r} there)")
