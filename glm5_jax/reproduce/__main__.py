"""``python -m glm5_jax.reproduce NAME --scale=smoke|cpu|pod --workdir=DIR``: one paper table.

    --list                    the tables, the paper's claim each tests, their experiment files
    NAME                      cost | long_context | code_benchmarks | async_rl | mtp_acceptance
    --scale=smoke             minutes on two CPU cores (what CI runs; numbers only show it works)
    --scale=cpu               the size whose result goes into BENCHMARKS.md
    --scale=pod               writes the pod configs and the launch/plan commands into DIR
                              (--plan also compiles each row with glm5_jax.plan; needs libtpu)
    --table.KEY=VALUE         change the table spec (experiments/paper/NAME.py get_table), e.g.
                              --table.seeds=0,1
    --parallel=K              training rows run at once (default 1)
    --fragment=PATH           also write the table as a BENCHMARKS.md fragment (its plots beside it)

Writes DIR/table.json, DIR/table.md and PNG plots; each training row is a sweep point with
its own workdir, DIR/points/<row>/ (``glm5_jax.sweep``). Rerunning the command resumes:
finished rows are not retrained, measured rows are not remeasured. Exit 0 when every row is
done, 1 when one failed or is missing (the table says which), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from glm5_jax import cli
from glm5_jax.errors import UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m glm5_jax.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--scale")
    parser.add_argument("--workdir")
    parser.add_argument("--plan", action="store_true")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--fragment")
    return parser


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    from glm5_jax.reproduce.scales import check_scale
    from glm5_jax.reproduce.tables import table_entry

    args, rest = _parser().parse_known_args(argv)
    stray = [a for a in rest if not a.startswith("--table.")]
    if stray:
        raise UserError(f"unknown arguments {stray}; table settings look like --table.KEY=VALUE")
    if args.list:
        return args, []
    if not args.name:
        raise UserError("name a table (or --list): python -m glm5_jax.reproduce NAME --scale=S --workdir=DIR")
    table_entry(args.name)
    if not args.scale:
        raise UserError("--scale is required; allowed: smoke, cpu, pod")
    check_scale(args.scale)
    if not args.workdir:
        raise UserError("--workdir is required (the table's directory; rerunning resumes it)")
    if args.parallel < 1:
        raise UserError(f"--parallel={args.parallel} must be >= 1")
    if args.plan and args.scale != "pod":
        raise UserError(f"--plan compiles pod configs; it needs --scale=pod, not --scale={args.scale}")
    return args, [a[len("--table."):] for a in rest]


def list_tables() -> str:
    from glm5_jax.reproduce.tables import TABLES

    width = max(len(name) for name in TABLES)
    return "\n".join(f"{name:<{width}}  {entry.claim}  [{entry.experiment}]" for name, entry in TABLES.items())


def main(argv: list[str]) -> int:
    args, assignments = parse(argv)
    if args.list:
        print(list_tables())
        return 0
    from glm5_jax.reproduce.context import Context
    from glm5_jax.reproduce.experiment_files import table_spec
    from glm5_jax.reproduce.load_monitor import LoadMonitor
    from glm5_jax.reproduce.points import share_compile_cache
    from glm5_jax.reproduce.scales import REPO
    from glm5_jax.reproduce.table_files import (
        TABLE_MD,
        record_run,
        write_fragment,
        write_table,
    )
    from glm5_jax.reproduce.tables import table_entry
    from glm5_jax.run_info import git_commit

    entry = table_entry(args.name)
    spec = table_spec(entry.experiment, args.scale, assignments)
    share_compile_cache()
    workdir = Path(args.workdir).absolute()
    context = Context(name=entry.name, scale=args.scale, workdir=workdir, experiment=entry.experiment,
                      spec=spec, table_assignments=tuple(assignments), run_planner=args.plan,
                      parallel=args.parallel, echo=lambda m: print(m, flush=True))
    workdir.mkdir(parents=True, exist_ok=True)
    started, commit = time.time(), git_commit()  # the code this invocation runs
    module = entry.load()
    with LoadMonitor() as load:
        context.load = load
        if args.scale == "pod" and not hasattr(module, "build_pod"):
            from glm5_jax.reproduce.pod import build_pod

            table = build_pod(context, module.points)
        elif args.scale == "pod":
            table = module.build_pod(context)
        else:
            table = module.build(context)
    table.provenance = record_run(workdir, context.provenance(started, commit))
    write_table(workdir, table)
    if args.fragment:
        write_fragment(table, workdir, Path(args.fragment).absolute(), REPO)
    print((workdir / TABLE_MD).read_text(), flush=True)
    return 0 if table.status in ("complete", "planned") else 1


if __name__ == "__main__":
    cli.run_argparse(main)
