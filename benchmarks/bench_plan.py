"""Per-chip memory of the train step on TPU topologies, variant against variant, from the
planner (libtpu's compiler, deviceless; no TPU needed).

    python benchmarks/bench_plan.py --out benchmarks/results/plan.md [--part tiny|full]

Two tables: the tiny preset's temporaries against sequence length with and without
rematerialisation (what grows like s^2 shows as 16x per 4x of sequence), and glm5_full on
v5p slices at 4K and 128K. Each row is one compile of the sparse stage (the DSA training
step); a row the compiler refuses still has its temporaries (from the compiler's message).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from glm5_jax.plan.planner import plan  # noqa: E402
from glm5_jax.plan.topology import parse_topology  # noqa: E402
from glm5_jax.train.experiment import SPARSE, load_experiment  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GIB = 1 << 30

TINY = [dict(seq_len=seq, remat=remat) for seq in (1024, 4096, 16384) for remat in ("none", "full")]
FULL = [dict(topology=topology, seq_len=seq, batch_size=batch, remat=remat)
        for topology, seq, batch, remat in (
            ("v5p-1024", 4096, 256, "none"), ("v5p-1024", 4096, 256, "full"),
            ("v5p-512", 4096, 128, "full"), ("v5p-2048", 4096, 512, "full"),
            # The batch shards over data x fsdp only (16 / 32 ways here), so 128K needs 16 / 32
            # sequences: 2M / 4M tokens per step.
            ("v5p-1024", 131072, 16, "full"), ("v5p-2048", 131072, 32, "full"))]


def one_plan(experiment: str, topology: str, seq_len: int, batch_size: int, mesh: str,
             remat: str) -> dict:
    config = load_experiment(os.path.join(ROOT, "experiments", experiment),
                             seq_len=seq_len, batch_size=batch_size, mesh=mesh)
    config.model_overrides["remat_policy"] = remat
    if seq_len > 4096:
        config.model_overrides["max_position_embeddings"] = seq_len
    start = time.perf_counter()
    result = plan(config, parse_topology(topology), [SPARSE])
    stage = result.stages[0]
    print(f"{experiment} {topology} seq {seq_len} x {batch_size} remat={remat}: peak "
          f"{stage.peak_bytes / GIB:,.2f} GiB, temporaries {stage.temp_bytes / GIB:,.2f} GiB "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return {"topology": topology, "seq_len": seq_len, "batch_size": batch_size, "remat": remat,
            "mesh": ",".join(f"{k}={v}" for k, v in result.mesh.items() if v > 1),
            "params": result.params_bytes, "optimizer": result.optimizer_bytes,
            "temp": stage.temp_bytes, "peak": stage.peak_bytes, "hbm": result.hbm_bytes,
            "fits": stage.fits, "mfu": stage.roofline.mfu if stage.roofline else None,
            "compile_s": time.perf_counter() - start}


def table(rows: list[dict]) -> list[str]:
    lines = ["| topology | mesh | seq x batch | remat | params | optimizer | temporaries | peak "
             "| of HBM | fits | roofline MFU |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"| {r['topology']} | {r['mesh']} | {r['seq_len']} x {r['batch_size']} | {r['remat']} "
            f"| {r['params'] / GIB:,.2f} GiB | {r['optimizer'] / GIB:,.2f} GiB "
            f"| {r['temp'] / GIB:,.2f} GiB | {r['peak'] / GIB:,.2f} GiB "
            f"| {100 * r['peak'] / r['hbm']:,.0f}% | {'yes' if r['fits'] else 'NO'} | {mfu} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--part", choices=("tiny", "full", "both"), default="both")
    args = parser.parse_args()
    tiny = [one_plan("tiny.py", "v5p-8", v["seq_len"], 8, "fsdp=2,expert=2", v["remat"])
            for v in TINY] if args.part in ("tiny", "both") else []
    full = [one_plan("glm5_full.py", v["topology"], v["seq_len"], v["batch_size"],
                     "fsdp=-1,expert=32", v["remat"])
            for v in FULL] if args.part in ("full", "both") else []
    command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    lines = [f"Command: `{command}` (sparse stage; libtpu {libtpu_version()}).", ""]
    if tiny:
        lines += ["Tiny preset on v5p-8 (4 chips), batch 8, temporaries against sequence "
                  "length:", "", *table(tiny), ""]
    if full:
        lines += ["glm5_full, 32-way expert parallelism, FSDP over the rest:", "", *table(full)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)


def libtpu_version() -> str:
    try:
        from importlib.metadata import version
        return version("libtpu")
    except Exception:  # noqa: BLE001
        return "unknown"


if __name__ == "__main__":
    main()
