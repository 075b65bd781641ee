"""Tokens/s of a training step at this commit against an earlier one, side by side.

    python benchmarks/bench_step_regression.py --base 9da9440 --repeats 3 --steps 10 \
        --configs experiments/tiny.py --out benchmarks/results/step_regression.md

Checks the base revision out into a temporary git worktree and runs ``bench_train.py`` (the
main job's own ``build_run`` and compiled step) from each tree in turn, alternating
base / head ``--repeats`` times so drift in machine load hits both. Prints each run's
tokens/s, the medians and their ratio (head / base), and the load average before and after.
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(tree: str, config: str, steps: int) -> float:
    env = {**os.environ, "PYTHONPATH": tree, "JAX_PLATFORMS": "cpu"}
    completed = subprocess.run(
        [sys.executable, os.path.join(tree, "benchmarks", "bench_train.py"), "--steps",
         str(steps), "--configs", os.path.join(tree, config)],
        cwd=tree, env=env, capture_output=True, text=True, check=True)
    for line in completed.stderr.splitlines():
        if line.startswith(os.path.join(tree, config) + ": {"):
            return float(ast.literal_eval(line.split(": ", 1)[1])["tokens_per_second"])
    raise RuntimeError(f"no result line from bench_train in {tree}:\n{completed.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--configs", default="experiments/tiny.py")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    load_before = os.getloadavg()
    lines = []
    with tempfile.TemporaryDirectory() as scratch:
        base_tree = os.path.join(scratch, "base")
        subprocess.run(["git", "worktree", "add", "--detach", base_tree, args.base], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            for config in args.configs.split(","):
                runs = {"base": [], "head": []}
                for _ in range(args.repeats):
                    runs["base"].append(run_bench(base_tree, config, args.steps))
                    runs["head"].append(run_bench(ROOT, config, args.steps))
                    print(f"{config}: base {runs['base'][-1]:,.0f}, head {runs['head'][-1]:,.0f} "
                          "tokens/s", flush=True)
                base, new = statistics.median(runs["base"]), statistics.median(runs["head"])
                lines.append(
                    f"| {config} | {args.base} | {head} | "
                    + ", ".join(f"{x:,.0f}" for x in runs["base"]) + " | "
                    + ", ".join(f"{x:,.0f}" for x in runs["head"])
                    + f" | {base:,.0f} | {new:,.0f} | {new / base:.2f}x |")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", base_tree], cwd=ROOT,
                           check=False, capture_output=True)
    load_after = os.getloadavg()
    text = "\n".join([
        f"Command: `python {' '.join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])}`; "
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"({os.cpu_count()} cores).", "",
        "| config | base | head | base tokens/s (runs) | head tokens/s (runs) | base median "
        "| head median | head / base |", "|---|---|---|---|---|---|---|---|", *lines, ""])
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
