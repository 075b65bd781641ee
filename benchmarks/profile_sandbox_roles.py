"""Where the sandbox's CPU goes, by process role: the 164 HumanEval canonicals under `perf`.

    python benchmarks/profile_sandbox_roles.py --workers 2

Runs ``evaluate_samples_file`` once under ``perf record -a -g`` (needs perf and
``perf_event_paranoid`` <= 2 with root, or lower), then attributes every sample of the
harness's processes by their names (``glm5-zygote``, ``-supervisor``, ``-init``, ``-judge``,
``-runner``; set with ``linux.set_process_name``) and by what the CPU was doing: user code,
page faults (copy-on-write after fork, mostly), process exit (address-space teardown),
``clone`` (copying page tables at fork) or a named system call. Prints a markdown table in
milliseconds of CPU per sample. System-wide sampling: other processes' samples are ignored,
but a loaded machine still inflates every number (print the load average with it).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROLES = ("glm5-runner", "glm5-init", "glm5-supervisor", "glm5-judge", "glm5-zygote")
FREQUENCY_HZ = 1999
SYSCALL = re.compile(r"(__x64_sys_\w+|__do_sys_\w+|asm_exc_page_fault|do_exit|do_group_exit)")
RENAMES = {"asm_exc_page_fault": "page faults", "do_exit": "exit", "do_group_exit": "exit",
           "clone": "clone (fork)"}

WORKLOAD = """
import sys, time
sys.path.insert(0, {repo!r})
sys.path.insert(0, {bench!r})
from bench_sandbox import write_canonical_samples
from glm5_jax.eval.evaluation import evaluate_samples_file
from glm5_jax.eval.humaneval import HumanEval
path = {samples!r}
count = write_canonical_samples(path)
started = time.perf_counter()
report = evaluate_samples_file(path, HumanEval(), ks=[1], workers={workers})
print(f"samples {{count}} wall {{time.perf_counter() - started:.2f}} s pass@1 {{report.pass_at_k}}")
"""


def classify(frames: list[str]) -> str:
    top = frames[0] if frames else ""
    if "kernel" not in top:
        return "user"
    for frame in frames:
        found = SYSCALL.search(frame)
        if found:
            name = found.group(1).replace("__x64_sys_", "").replace("__do_sys_", "")
            return RENAMES.get(name, RENAMES.get(found.group(1), name))
    return "kernel, other"


def attribute(script_output: str) -> tuple[dict[str, collections.Counter], dict[str, set]]:
    by_role: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    processes: dict[str, set] = collections.defaultdict(set)
    for block in script_output.split("\n\n"):
        lines = block.strip("\n").split("\n")
        head = lines[0].split()
        if not head or head[0] not in ROLES:
            continue
        by_role[head[0]][classify([line.strip() for line in lines[1:]])] += 1
        processes[head[0]].add(head[-1].split("/")[0])
    return by_role, processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with open("/proc/loadavg") as handle:
        load_start = " ".join(handle.read().split()[:3])
    with tempfile.TemporaryDirectory() as scratch:
        data = os.path.join(scratch, "perf.data")
        workload = WORKLOAD.format(repo=str(REPO), bench=str(REPO / "benchmarks"),
                                   samples=os.path.join(scratch, "samples.jsonl"),
                                   workers=args.workers)
        run = subprocess.run(["perf", "record", "-o", data, "-a", "-g", "-F", str(FREQUENCY_HZ),
                              "--", sys.executable, "-c", workload],
                             capture_output=True, text=True, check=True)
        summary = [line for line in run.stdout.splitlines() if line.startswith("samples ")]
        script = subprocess.run(["perf", "script", "-i", data, "-F", "pid,tid,comm,ip,sym,dso"],
                                capture_output=True, text=True, check=True).stdout
    with open("/proc/loadavg") as handle:
        load_end = " ".join(handle.read().split()[:3])
    count = int(summary[0].split()[1]) if summary else 164
    by_role, processes = attribute(script)
    print(f"load average {load_start} at start, {load_end} at end; {summary[0] if summary else ''}")
    print(f"perf at {FREQUENCY_HZ} Hz, all CPUs; ms of CPU per sample ({count} samples)\n")
    kinds = ["user", "page faults", "exit", "clone (fork)"]
    print("| role | processes | ms/sample | " + " | ".join(kinds) + " | other |")
    print("|---|---|---|" + "---|" * (len(kinds) + 1))
    total = 0.0
    for role in ROLES:
        counts = by_role.get(role, collections.Counter())
        samples = sum(counts.values())
        ms = samples / FREQUENCY_HZ / count * 1e3
        total += ms
        shares = [counts[kind] / samples * ms if samples else 0.0 for kind in kinds]
        other = ms - sum(shares)
        print(f"| {role} | {len(processes.get(role, ()))} | {ms:.2f} | "
              + " | ".join(f"{share:.2f}" for share in shares) + f" | {other:.2f} |")
    print(f"| **all roles** | | **{total:.2f}** |" + " |" * (len(kinds) + 1))


if __name__ == "__main__":
    main()
