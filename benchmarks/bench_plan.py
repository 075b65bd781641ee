"""Per-chip memory of the train step on TPU topologies, variant against variant, from the
planner (libtpu's compiler, deviceless; no TPU needed).

    python benchmarks/bench_plan.py --out benchmarks/results/plan.md [--part tiny|full]

Two tables: the tiny preset's temporaries against sequence length, masked_dense attention
against gather attention with the running top-k (what grows like s^2 shows as 16x per 4x of
sequence), and glm5_full on v5p slices at 4K and 128K. Each row is one compile of the sparse stage (the DSA training
step); a row the compiler refuses still has its temporaries (from the compiler's message).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from glm5_jax.config_fields import set_fields  # noqa: E402
from glm5_jax.plan.planner import plan  # noqa: E402
from glm5_jax.plan.topology import parse_topology  # noqa: E402
from glm5_jax.train.experiment import SPARSE, load_experiment  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GIB = 1 << 30

# The tiny preset against sequence length: masked_dense attention (the reference path, s^2
# logits and an [s, t] index-score matrix) against gather attention with the running top-k.
TINY = [dict(seq_len=seq, attention=attention)
        for attention in ("masked_dense", "gather") for seq in (1024, 4096, 16384)]
# glm5_full with its experiment's settings (full remat, ragged expert parallelism, gather
# attention). Rows shard over fsdp x expert (x data), the sequence over context, so each
# mesh is chosen for its batch: 4K rows hold one sequence per (fsdp, expert) pair with
# tensor=2 (or context=2); 128K rows split each sequence 32 ways over context, 16 sequences
# (2M tokens) per step.
FULL = [
    dict(topology="v5p-512", seq_len=4096, batch_size=128, mesh="fsdp=4,expert=32,tensor=2"),
    dict(topology="v5p-1024", seq_len=4096, batch_size=256, mesh="fsdp=8,expert=32,tensor=2"),
    # The same batch with the sequence split in two instead of the heads: no tensor all-reduces.
    dict(topology="v5p-1024", seq_len=4096, batch_size=256, mesh="fsdp=8,expert=32,context=2"),
    dict(topology="v5p-2048", seq_len=4096, batch_size=512, mesh="fsdp=16,expert=32,tensor=2"),
    dict(topology="v5p-1024", seq_len=131072, batch_size=16, mesh="expert=16,context=32"),
    dict(topology="v5p-2048", seq_len=131072, batch_size=16, mesh="expert=16,context=32,tensor=2"),
]


def one_plan(experiment: str, topology: str, seq_len: int, batch_size: int, mesh: str,
             **model_overrides) -> dict:
    config = load_experiment(os.path.join(ROOT, "experiments", experiment),
                             seq_len=seq_len, batch_size=batch_size, mesh=mesh)
    with config.unlocked():
        config.model_overrides.update(model_overrides)
        if seq_len > 4096:
            config.model_overrides["max_position_embeddings"] = seq_len
    start = time.perf_counter()
    result = plan(config, parse_topology(topology), [SPARSE])
    stage = result.stages[0]
    model = layout_model(config)
    print(f"{experiment} {topology} seq {seq_len} x {batch_size} {mesh} {model_overrides}: peak "
          f"{stage.peak_bytes / GIB:,.2f} GiB, temporaries {stage.temp_bytes / GIB:,.2f} GiB "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return {"topology": topology, "seq_len": seq_len, "batch_size": batch_size,
            "remat": model["remat_policy"], "attention": model["attention_impl"],
            "mesh": ",".join(f"{k}={v}" for k, v in result.mesh.items() if v > 1),
            "params": result.params_bytes, "optimizer": result.optimizer_bytes,
            "temp": stage.temp_bytes, "peak": stage.peak_bytes, "hbm": result.hbm_bytes,
            "fits": stage.fits, "mfu": stage.roofline.mfu if stage.roofline else None,
            "compile_s": time.perf_counter() - start}


def layout_model(config) -> dict:
    overrides = set_fields(config.model_overrides)
    return {"remat_policy": overrides.get("remat_policy", "none"),
            "attention_impl": overrides.get("attention_impl", "masked_dense")}


def table(rows: list[dict]) -> list[str]:
    lines = ["| topology | mesh | seq x batch | attention | remat | params | optimizer "
             "| temporaries | peak | of HBM | fits | roofline MFU |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"| {r['topology']} | {r['mesh']} | {r['seq_len']} x {r['batch_size']} "
            f"| {r['attention']} | {r['remat']} "
            f"| {r['params'] / GIB:,.2f} GiB | {r['optimizer'] / GIB:,.2f} GiB "
            f"| {r['temp'] / GIB:,.2f} GiB | {r['peak'] / GIB:,.2f} GiB "
            f"| {100 * r['peak'] / r['hbm']:,.0f}% | {'yes' if r['fits'] else 'NO'} | {mfu} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--part", choices=("tiny", "full", "both"), default="both")
    args = parser.parse_args()
    tiny = [one_plan("tiny.py", "v5p-8", v["seq_len"], 8, "fsdp=2,expert=2",
                     remat_policy="full", attention_impl=v["attention"])
            for v in TINY] if args.part in ("tiny", "both") else []
    full = [one_plan("glm5_full.py", v["topology"], v["seq_len"], v["batch_size"], v["mesh"])
            for v in FULL] if args.part in ("full", "both") else []
    command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    lines = [f"Command: `{command}` (sparse stage; libtpu {libtpu_version()}).", ""]
    if tiny:
        lines += ["Tiny preset on v5p-8 (4 chips), batch 8, full remat, temporaries against "
                  "sequence length, masked_dense attention (before) and gather attention with "
                  "the running top-k (after):", "", *table(tiny), ""]
    if full:
        lines += ["glm5_full as `experiments/glm5_full.py` sets it (full remat, ragged expert "
                  "parallelism, gather attention), mesh per row:", "", *table(full)]
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
