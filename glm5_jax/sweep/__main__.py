"""``python -m glm5_jax.sweep --config=experiments/tiny.py --workdir=DIR --axis=KEY=V1,V2 ...``

    --job=train|rl                            what a point runs (default train): ``train``:
                                              python -m glm5_jax.train; ``rl``: python -m
                                              glm5_jax.rl, then python -m
                                              glm5_jax.rl.evaluation on the point (with an RL
                                              config, e.g. experiments/rl/tiny_async.py;
                                              local launcher and workdir only)
    --axis=learning_rate=1e-3,3e-3            one axis; several --axis make a grid
    --axis=model_overrides.router_mode=static,dynamic
    --config=experiments/sweeps/NAME.py       a sweep file: get_config() and get_sweep()
                                              (a list of override dicts) instead of --axis
    --parallel=K                              points run at once (local launcher)
    --launcher=local|tpu|slurm                run here, or submit through launch/
    --num_processes=N --devices_per_process=M each point as a multi-process job (local)
    --launcher_args="--zone=... --tpu_name=..."   passed to launch/tpu.py or launch/slurm.py
    --metric=ce_loss                          the table's and the plot's metric; train:
                                              ce_loss (default; comparable across DSA
                                              stages), loss (the stage's objective),
                                              mtp_loss, indexer_kl, indexer_recall; rl (the
                                              fixed evaluation): eval_reward (default),
                                              eval_pass_rate, eval_held_out_reward,
                                              eval_held_out_pass_rate
    --config.FIELD=VALUE                      applied to every point

Writes DIR/points/<name>/ (one training or RL workdir per point), DIR/sweep.json (the
job), DIR/results.jsonl, DIR/results.md and DIR/results.png; DIR may be gs://... (through
etils.epath; train only). Rerunning skips finished points and continues the others from their
checkpoints (an RL point whose training finished but whose evaluation failed reruns only the
evaluation); a failing point is recorded and the rest go on (exit 1 if any point failed).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from glm5_jax import cli
from glm5_jax.errors import UserError
from glm5_jax.paths import as_path, is_local
from glm5_jax.sweep.jobs import get_job, resolve_metric

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
    parser.add_argument("--metric", default=None)
    parser.add_argument("--job", default="train")
    args, rest = parser.parse_known_args(argv)
    stray = [a for a in rest if not a.startswith("--config.")]
    if stray:
        raise UserError(f"unknown arguments {stray}; shared overrides look like --config.FIELD=VALUE")
    if args.launcher not in LAUNCHERS:
        raise UserError(f"--launcher={args.launcher!r}; allowed: {list(LAUNCHERS)}")
    if args.parallel < 1 or args.num_processes < 1:
        raise UserError("--parallel and --num_processes must be >= 1")
    job = get_job(args.job)
    args.metric = resolve_metric(job, args.metric)
    if job.after and args.launcher != "local":
        raise UserError(f"--job={job.name} runs {list(job.after)} on this host after training: "
                        f"use --launcher=local (not {args.launcher!r})")
    if job.name == "rl" and not is_local(as_path(args.workdir)):
        raise UserError(f"--job=rl writes its points with local files: --workdir={args.workdir} "
                        "must be a local directory")
    return args, rest


def main(argv: list[str]) -> int:
    from glm5_jax.sweep.grid import grid, override_flags, point_name, sweep_file_points
    from glm5_jax.sweep.results import point_row, write_results
    from glm5_jax.sweep.runner import read_status, record_job, run_sweep

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

    job = get_job(args.job)
    directory = as_path(args.workdir)
    directory.mkdir(parents=True, exist_ok=True)
    record_job(directory, job)
    print(f"sweep of {len(points)} {job.name} point(s) in {directory}", flush=True)
    statuses = run_sweep(directory, points, args.config, shared, args.launcher, args.parallel,
                         args.num_processes, args.devices_per_process,
                         shlex.split(args.launcher_args), echo=lambda m: print(m, flush=True),
                         job=job)
    rows = [point_row(name, points[name], read_status(directory / "points" / name) or statuses[name],
                      directory / "points" / name, job.name) for name in points]
    write_results(directory, rows, args.metric, job.name)
    print((directory / "results.md").read_text(), flush=True)
    failed = [r["name"] for r in rows if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} point(s) failed: {failed} (see DIR/points/<name>/sweep.log)",
              file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run_argparse(main)
