"""Run (or submit) every point of a sweep; finished points are skipped, unfinished ones
continue from their checkpoints, a failing point is recorded and the others go on.

A point runs its job's commands (``jobs.py``): for ``--job=train`` (the default) ``python -m
glm5_jax.train --config=C --workdir=DIR/points/<name> <shared overrides> <its overrides>``;
for ``--job=rl`` ``python -m glm5_jax.rl`` with the same arguments, then ``python -m
glm5_jax.rl.evaluation --workdir=DIR/points/<name>``. The first command is started as a
subprocess (``--launcher=local``; through ``launch/local.py`` when it has several processes)
or handed to ``launch/tpu.py`` / ``launch/slurm.py``; the commands after it run here once it
has succeeded. What happened is in ``<point>/sweep_status.json``: done (every command exited
0; training said "done"/"nothing to do"), preempted, failed (with the last lines of its
output, and ``commands_done`` when an earlier command had succeeded: a rerun starts after
it), or submitted. Rerunning the sweep runs every point whose status is not done. The job is
recorded in ``DIR/sweep.json``; a rerun with another job is refused. DIR may be ``gs://...``
(files through ``etils.epath``; ``train`` only); a point's ``sweep.log`` then appears when the
point ends (a local one fills as it runs).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from etils import epath

from glm5_jax.errors import UserError
from glm5_jax.paths import is_local
from glm5_jax.sweep.grid import Point
from glm5_jax.sweep.jobs import JOBS, Job, point_commands

REPO = Path(__file__).resolve().parents[2]  # the code: always local
STATUS_FILE = "sweep_status.json"
SWEEP_FILE = "sweep.json"
ERROR_LINES = 15


def read_status(point_dir: epath.Path) -> dict[str, Any]:
    path = point_dir / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_status(point_dir: epath.Path, status: dict[str, Any]) -> None:
    (point_dir / STATUS_FILE).write_text(json.dumps(status, indent=1) + "\n")


def record_job(directory: epath.Path, job: Job) -> None:
    """``DIR/sweep.json`` names the sweep's job; a sweep directory holds points of one job."""
    path = directory / SWEEP_FILE
    if path.exists():
        recorded = json.loads(path.read_text()).get("job", "train")
        if recorded != job.name:
            raise UserError(f"{directory} holds a --job={recorded} sweep ({path}); this is "
                            f"--job={job.name}: use another --workdir")
    else:
        path.write_text(json.dumps({"job": job.name}) + "\n")


def job_commands(job: Job, config_path: str, point_dir: epath.Path, point: Point,
                 shared: list[str]) -> list[list[str]]:
    """The point's commands (``jobs.point_commands``), under one name tests can stand in for."""
    return point_commands(job, config_path, point_dir, point, shared)


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


def _run_logged(command: list[str], log_path: epath.Path, append: bool = False) -> tuple[int, str]:
    """Run ``command`` from the repository with its output (stdout and stderr) in ``log_path``
    (after what is there with ``append``): written as it comes on a local disk; on an object
    store written whole when it ends. Returns the exit code and this command's output."""
    if not is_local(log_path):
        result = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", check=False)
        before = log_path.read_text() if append and log_path.exists() else ""
        log_path.write_text(before + result.stdout)
        return result.returncode, result.stdout
    start = os.path.getsize(log_path) if append and log_path.exists() else 0
    with open(log_path, "a" if append else "w") as log:
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
                                check=False)
    return result.returncode, log_path.read_bytes()[start:].decode(errors="replace")


def run_point(name: str, point: Point, directory: epath.Path, config_path: str, shared: list[str],
              launcher: str, num_processes: int, devices_per_process: int | None,
              launcher_args: list[str], echo, job: Job = JOBS["train"]) -> dict[str, Any]:
    point_dir = directory / "points" / name
    point_dir.mkdir(parents=True, exist_ok=True)
    commands = job_commands(job, config_path, point_dir, point, shared)
    done_before = read_status(point_dir).get("commands_done", 0)  # a rerun starts after them
    status = {"status": "done"}
    for index in range(done_before, len(commands)):
        command = commands[index]
        if index == 0:
            command = launcher_command(launcher, command, point_dir, num_processes,
                                       devices_per_process, launcher_args) or command
        echo(f"[{name}] {shlex.join(command)}")
        returncode, output = _run_logged(command, point_dir / "sweep.log", append=index > done_before)
        if returncode != 0:
            tail = [line for line in output.splitlines() if line.strip()][-ERROR_LINES:]
            status = {"status": "failed", "returncode": returncode, "error": "\n".join(tail)}
            if index:
                status["commands_done"] = index
            break
        if launcher != "local":
            status = {"status": "submitted"}
            break
        if "preempted:" in output:
            status = {"status": "preempted"}
            break
    _write_status(point_dir, status)
    echo(f"[{name}] {status['status']}" + (f": {status['error'].splitlines()[-1]}"
                                          if status.get("error") else ""))
    return status


def run_sweep(directory: epath.Path, points: dict[str, Point], config_path: str, shared: list[str],
              launcher: str = "local", parallel: int = 1, num_processes: int = 1,
              devices_per_process: int | None = None, launcher_args: list[str] | None = None,
              echo=print, job: Job = JOBS["train"]) -> dict[str, dict[str, Any]]:
    """Status per point name, after running every point that is not done."""
    statuses = {name: read_status(directory / "points" / name) for name in points}
    todo = [name for name, status in statuses.items() if status.get("status") != "done"]
    for name in points:
        if name not in todo:
            echo(f"[{name}] done before: skipped")
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(parallel, 1)) as pool:
        futures = {pool.submit(run_point, name, points[name], directory, config_path, shared,
                               launcher, num_processes, devices_per_process,
                               list(launcher_args or []), echo, job): name for name in todo}
        for future in concurrent.futures.as_completed(futures):
            statuses[futures[future]] = future.result()
    return statuses
