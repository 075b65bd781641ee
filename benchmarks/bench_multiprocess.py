"""2 processes x 4 CPU devices against 1 process x 8, the same tiny job on the same mesh.

    python benchmarks/bench_multiprocess.py --repeats 3 --out benchmarks/results/multiprocess.md

Runs ``python -m glm5_jax.train`` on experiments/tiny.py (mesh fsdp=8) as one process with
8 simulated devices and through ``launch/local.py`` as 2 x 4 (gloo collectives), side by
side, ``--repeats`` times; prints losses (max relative difference per step), tokens/s of
the steady-state windows (median, and the ratio), and, once, how long the launcher takes
to end the job after one process is SIGKILLed. The load average is printed with the table:
the ratio is only meaningful on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = 40
FLAGS = [f"--config.total_steps={STEPS}", "--config.warmup_steps=5", "--config.dense_steps=20",
         "--config.dense_warmup_steps=5", "--config.log_every=5", "--config.mesh=fsdp=8",
         "--config.checkpoint_every=10", "--config.progress_bar=False"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **extra)
    return env


def _train(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "glm5_jax.train", "--config=experiments/tiny.py",
            f"--workdir={workdir}", *FLAGS]


def one_process(workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(_train(workdir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"))


def two_processes(workdir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "launch/local.py", "--num_processes=2", "--devices_per_process=4",
                             f"--workdir={workdir}", "--grace_seconds=5", "--", *_train(workdir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def run(start, workdir: Path) -> list[dict]:
    shutil.rmtree(workdir, ignore_errors=True)
    process = start(workdir)
    output, _ = process.communicate(timeout=1800)
    if process.returncode != 0:
        raise SystemExit(f"{workdir.name} failed:\n{output.decode()[-3000:]}")
    return metrics(workdir)


def death_notice_seconds(scratch: Path) -> float:
    """Seconds from SIGKILL of process 1 to the launcher's non-zero exit."""
    workdir = scratch / "killed"
    shutil.rmtree(workdir, ignore_errors=True)
    job = two_processes(workdir)
    while not (workdir / "metrics.jsonl").exists():
        time.sleep(0.2)
        if job.poll() is not None:
            raise SystemExit("the job ended before its first log line")
    children = Path(f"/proc/{job.pid}/task/{job.pid}/children").read_text().split()
    os.kill(sorted(map(int, children))[1], signal.SIGKILL)
    killed = time.monotonic()
    job.communicate(timeout=600)
    assert job.returncode != 0
    return time.monotonic() - killed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="glm5_multiprocess_"))
    rows = []
    for repeat in range(args.repeats):
        single = run(one_process, scratch / "one_x_8")
        double = run(two_processes, scratch / "two_x_4")
        diff = max(abs(a["ce_loss"] - b["ce_loss"]) / abs(a["ce_loss"]) for a, b in zip(single, double))
        speed = lambda records: statistics.median(r["tokens_per_second"] for r in records[1:])  # noqa: E731
        rows.append({"repeat": repeat, "max_rel_ce_diff": diff, "one_x_8": speed(single),
                     "two_x_4": speed(double), "final_ce": (single[-1]["ce_loss"], double[-1]["ce_loss"])})
        print(rows[-1], flush=True)
    notice = death_notice_seconds(scratch)
    load = os.getloadavg()
    ratio = statistics.median(r["two_x_4"] / r["one_x_8"] for r in rows)
    lines = [
        "Command: `python benchmarks/bench_multiprocess.py --repeats "
        f"{args.repeats} --out benchmarks/results/multiprocess.md` (load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores).", "",
        f"experiments/tiny.py, {STEPS} steps (dense, DSA stage 1, sparse), mesh fsdp=8, batch 8 x 128; "
        "1 process x 8 simulated CPU devices against 2 processes x 4 through `launch/local.py` "
        "(gloo collectives between the processes):", "",
        "| repeat | max relative ce_loss difference over the logged windows | final ce_loss 1 x 8 | "
        "final ce_loss 2 x 4 | tokens/s 1 x 8 | tokens/s 2 x 4 | ratio 2x4 / 1x8 |",
        "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['repeat']} | {r['max_rel_ce_diff']:.2e} | {r['final_ce'][0]:.5f} | "
                     f"{r['final_ce'][1]:.5f} | {r['one_x_8']:.0f} | {r['two_x_4']:.0f} | "
                     f"{r['two_x_4'] / r['one_x_8']:.2f} |")
    lines += ["", f"Median tokens/s ratio 2 x 4 / 1 x 8: **{ratio:.2f}** (the same 2 cores run "
              "both; the 2-process job adds gloo's cross-process collectives on top of the same "
              "arithmetic, so this measures the cost of going through the distributed runtime, "
              "not a speed-up).", "",
              f"One process SIGKILLed after the first log line: the launcher ended the job "
              f"{notice:.1f} s later with a non-zero exit.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
