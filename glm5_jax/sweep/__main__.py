"""``python -m glm5_jax.sweep --config=experiments/tiny.py --workdir=DIR --axis=KEY=V1,V2 ...``

    --axis=learning_rate=1e-3,3e-3            one axis; several --axis make a grid
    --axis=model_overrides.router_mode=static,dynamic
    --config=experiments/sweeps/NAME.py       a sweep file: get_config() and get_sweep()
                                              (a list of override dicts) instead of --axis
    --parallel=K                              points run at once (local launcher)
    --launcher=local|tpu|slurm                run here, or submit through launch/
    --num_processes=N --devices_per_process=M each point as a multi-process job (local)
    --launcher_args="--zone=... --tpu_name=..."   passed to launch/tpu.py or launch/slurm.py
    --metric=ce_loss                          the table's and the plot's metric (ce_loss:
                                              comparable across DSA stages; loss is the
                                              stage's objective)
    --config.FIELD=VALUE                      applied to every point

Writes DIR/points/<name>/ (one training workdir per point), DIR/results.jsonl,
DIR/results.md and DIR/results.png; DIR may be gs://... (through etils.epath). Rerunning
skips finished points and continues the others from their checkpoints; a failing point is
recorded and the rest go on (exit 1 if any point failed).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from glm5_jax import cli
from glm5_jax.errors import UserError
from glm5_jax.paths import as_path

LAUNCHERS = ("local", "tpu", "slurm")


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m glm5_jax.sweep",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--axis", action="append", default=[])
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--launcher", default="local")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--devices_per_process", type=int, default=None)
    parser.add_argument("--launcher_args", default="")
    parser.add_argument("--metric", default="ce_loss")
    args, rest = parser.parse_known_args(argv)
    stray = [a for a in rest if not a.startswith("--config.")]
    if stray:
        raise UserError(f"unknown arguments {stray}; shared overrides look like --config.FIELD=VALUE")
    if args.launcher not in LAUNCHERS:
        raise UserError(f"--launcher={args.launcher!r}; allowed: {list(LAUNCHERS)}")
    if args.parallel < 1 or args.num_processes < 1:
        raise UserError("--parallel and --num_processes must be >= 1")
    return args, rest


def main(argv: list[str]) -> int:
    from glm5_jax.sweep.grid import grid, override_flags, point_name, sweep_file_points
    from glm5_jax.sweep.results import point_row, write_results
    from glm5_jax.sweep.runner import read_status, run_sweep

    args, shared = parse(argv)
    if not Path(args.config).is_file():  # code: always local
        raise UserError(f"--config={args.config}: no such file")
    from_file = sweep_file_points(args.config)
    if from_file is not None and args.axis:
        raise UserError(f"{args.config} defines get_sweep(); drop --axis (or use a plain config)")
    point_list = from_file if from_file is not None else grid(args.axis)
    points = {point_name(p): p for p in point_list}
    if len(points) != len(point_list):
        raise UserError("two sweep points have the same overrides")
    for flags in [shared] + [override_flags(p) for p in points.values()]:
        problem = cli.unknown_override([f"--config={args.config}", *flags])
        if problem:
            raise UserError(problem)

    directory = as_path(args.workdir)
    directory.mkdir(parents=True, exist_ok=True)
    print(f"sweep of {len(points)} point(s) in {directory}", flush=True)
    statuses = run_sweep(directory, points, args.config, shared, args.launcher, args.parallel,
                         args.num_processes, args.devices_per_process,
                         shlex.split(args.launcher_args), echo=lambda m: print(m, flush=True))
    rows = [point_row(name, points[name], read_status(directory / "points" / name) or statuses[name],
                      directory / "points" / name) for name in points]
    write_results(directory, rows, args.metric)
    print((directory / "results.md").read_text(), flush=True)
    failed = [r["name"] for r in rows if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} point(s) failed: {failed} (see DIR/points/<name>/sweep.log)",
              file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run_argparse(main)
