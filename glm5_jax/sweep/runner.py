"""Run (or submit) every point of a sweep; finished points are skipped, unfinished ones
continue from their checkpoints, a failing point is recorded and the others go on.

A point is ``python -m glm5_jax.train --config=C --workdir=DIR/points/<name> <shared
overrides> <its overrides>``, started as a subprocess (``--launcher=local``; through
``launch/local.py`` when it has several processes) or handed to ``launch/tpu.py`` /
``launch/slurm.py``. What happened is in ``<point>/sweep_status.json``: done (exit 0 and
"done"/"nothing to do"), preempted, failed (with the last lines of its output), or
submitted. Rerunning the sweep runs every point whose status is not done. DIR may be
``gs://...`` (files through ``etils.epath``); a point's ``sweep.log`` then appears when the
point ends (a local one fills as it runs).
"""

from __future__ import annotations

import concurrent.futures
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from etils import epath

from glm5_jax.paths import is_local
from glm5_jax.sweep.grid import Point, override_flags

REPO = Path(__file__).resolve().parents[2]  # the code: always local
STATUS_FILE = "sweep_status.json"
ERROR_LINES = 15


def read_status(point_dir: epath.Path) -> dict[str, Any]:
    path = point_dir / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_status(point_dir: epath.Path, status: dict[str, Any]) -> None:
    (point_dir / STATUS_FILE).write_text(json.dumps(status, indent=1) + "\n")


def train_command(config_path: str, point_dir: epath.Path, point: Point, shared: list[str]) -> list[str]:
    return [sys.executable, "-m", "glm5_jax.train", f"--config={config_path}",
            f"--workdir={point_dir}", *shared, *override_flags(point)]


def launcher_command(launcher: str, command: list[str], point_dir: epath.Path, num_processes: int,
                     devices_per_process: int | None, launcher_args: list[str]) -> list[str] | None:
    """The launcher invocation for a point, or None to run ``command`` directly."""
    if launcher == "local" and num_processes == 1:
        return None
    script = REPO / "launch" / f"{launcher}.py"
    args = [sys.executable, str(script), f"--workdir={point_dir}", *launcher_args]
    if launcher == "local":
        args += [f"--num_processes={num_processes}"]
        if devices_per_process:
            args += [f"--devices_per_process={devices_per_process}"]
    return args + ["--", *command]


def _run_logged(command: list[str], log_path: epath.Path) -> tuple[int, str]:
    """Run ``command`` from the repository with its output (stdout and stderr) in ``log_path``:
    written as it comes on a local disk; on an object store written whole when it ends.
    Returns the exit code and the output."""
    if not is_local(log_path):
        result = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", check=False)
        log_path.write_text(result.stdout)
        return result.returncode, result.stdout
    with open(log_path, "w") as log:
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
                                check=False)
    return result.returncode, log_path.read_bytes().decode(errors="replace")


def run_point(name: str, point: Point, directory: epath.Path, config_path: str, shared: list[str],
              launcher: str, num_processes: int, devices_per_process: int | None,
              launcher_args: list[str], echo) -> dict[str, Any]:
    point_dir = directory / "points" / name
    point_dir.mkdir(parents=True, exist_ok=True)
    command = train_command(config_path, point_dir, point, shared)
    wrapped = launcher_command(launcher, command, point_dir, num_processes, devices_per_process,
                               launcher_args) or command
    echo(f"[{name}] {shlex.join(wrapped)}")
    returncode, output = _run_logged(wrapped, point_dir / "sweep.log")
    if returncode != 0:
        tail = [line for line in output.splitlines() if line.strip()][-ERROR_LINES:]
        status = {"status": "failed", "returncode": returncode, "error": "\n".join(tail)}
    elif launcher != "local":
        status = {"status": "submitted"}
    elif "preempted:" in output:
        status = {"status": "preempted"}
    else:
        status = {"status": "done"}
    _write_status(point_dir, status)
    echo(f"[{name}] {status['status']}" + (f": {status['error'].splitlines()[-1]}"
                                          if status.get("error") else ""))
    return status


def run_sweep(directory: epath.Path, points: dict[str, Point], config_path: str, shared: list[str],
              launcher: str = "local", parallel: int = 1, num_processes: int = 1,
              devices_per_process: int | None = None, launcher_args: list[str] | None = None,
              echo=print) -> dict[str, dict[str, Any]]:
    """Status per point name, after running every point that is not done."""
    statuses = {name: read_status(directory / "points" / name) for name in points}
    todo = [name for name, status in statuses.items() if status.get("status") != "done"]
    for name in points:
        if name not in todo:
            echo(f"[{name}] done before: skipped")
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(parallel, 1)) as pool:
        futures = {pool.submit(run_point, name, points[name], directory, config_path, shared,
                               launcher, num_processes, devices_per_process,
                               list(launcher_args or []), echo): name for name in todo}
        for future in concurrent.futures.as_completed(futures):
            statuses[futures[future]] = future.result()
    return statuses
