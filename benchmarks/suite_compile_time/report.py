"""Sums the per-process compile events ``sitecustomize.py`` wrote: totals, then by program.

    python benchmarks/suite_compile_time/report.py DIR
"""

from __future__ import annotations

import collections
import glob
import json
import sys

COMPILE = "/jax/core/compile/backend_compile_duration"
SHOWN = (COMPILE, "/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
         "/jax/compilation_cache/compile_time_saved_sec", "/jax/compilation_cache/cache_retrieval_time_sec")


def main(directory: str) -> None:
    seconds, counts = collections.Counter(), collections.Counter()
    programs = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    records = [json.load(open(path)) for path in glob.glob(f"{directory}/*.json")]
    for record in records:
        seconds.update(record["seconds"])
        counts.update(record["counts"])
        name = " ".join(record["argv"][:2])[:100]
        row = programs[name]
        row[0] += record["seconds"].get(COMPILE, 0.0)
        row[1] += record["cpu_s"]
        row[2] += record["wall_s"]
        row[3] += 1
    print(f"{len(records)} processes, {sum(r['cpu_s'] for r in records):.0f} CPU-s\n")
    print("| event | seconds | count |\n|---|---|---|")
    for event in SHOWN:
        print(f"| {event} | {seconds[event]:.1f} | {counts[event]} |")
    print("\n| program (argv) | compile s | CPU s | wall s | processes |\n|---|---|---|---|---|")
    for name, (compile_s, cpu_s, wall_s, n) in sorted(programs.items(), key=lambda kv: -kv[1][1])[:25]:
        print(f"| `{name}` | {compile_s:.1f} | {cpu_s:.1f} | {wall_s:.1f} | {n} |")


if __name__ == "__main__":
    main(sys.argv[1])
