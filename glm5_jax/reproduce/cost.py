"""Table 1, cost: dense baseline vs sigmoid MoE vs MoE + DSA vs MoE with the dynamic router.

Every row trains (``experiments/paper/cost.py``) on the same tokens with the same seed, then
is measured (``measure.py``): the loss on fixed batches, active parameters per token, FLOPs
per token of its compiled train step, prefill and decode, the formula's FLOPs beside them,
training tokens/s (the run's own median) and greedy decode tokens/s. The iso-loss compute
ratio (``iso_loss.py``) compares each row with the dense baseline interpolated over sizes;
the paper's 0.62x is an inference cost, so the decode FLOPs ratio is the one to hold
against it, and the training FLOPs ratio against "compute cut ~40%".
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

from glm5_jax.reproduce.context import Context
from glm5_jax.reproduce.corpora import corpus_overrides
from glm5_jax.reproduce.experiment_files import merge, training_config
from glm5_jax.reproduce.iso_loss import iso_loss_ratio
from glm5_jax.reproduce.plots import figure
from glm5_jax.reproduce.points import point_dir, row_provenance, train_points
from glm5_jax.reproduce.table_files import Table

MEASUREMENTS = "measurements.json"
COLUMNS = [
    ("variant", "variant"), ("size", "size"), ("seed", "seed"), ("status", "status"),
    ("active_params", "active params/token"), ("routed_experts", "routed experts/token"),
    ("final_train_ce", "final train CE"), ("eval_ce", "eval CE"),
    ("train_flops", "train FLOPs/token (compiled)"), ("train_flops_formula", "train FLOPs/token (formula)"),
    ("prefill_flops", "prefill FLOPs/token (compiled)"), ("decode_flops", "decode FLOPs/token (compiled)"),
    ("train_tokens_per_s", "train tokens/s"), ("decode_tokens_per_s", "decode tokens/s"),
    ("iso_loss_train", "iso-loss train compute vs dense"), ("iso_loss_inference", "iso-loss inference compute vs dense"),
]


def points(context: Context) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Row name -> (identity: variant, size, seed; nested overrides)."""
    spec = context.spec
    shared = corpus_overrides(context, spec) if context.scale != "pod" else {}
    rows = {}
    for variant, overrides in spec.variants.items():
        for size in spec.variant_sizes[variant].split(","):
            for seed in spec.seeds:
                rows[f"{variant}-{size}-seed{seed}"] = (
                    {"variant": variant, "size": size, "seed": seed},
                    merge({"model_overrides": spec.sizes[size]}, overrides, {"seed": seed}, shared))
    return rows


def measure_row(context: Context, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Every measured number of a trained row (cached in its workdir: a rerun reads it back)."""
    from glm5_jax.reproduce import measure
    from glm5_jax.sample.checkpoint import load_train_workdir
    from glm5_jax.sweep.results import point_row
    from glm5_jax.train.flops import training_flops_per_token
    from glm5_jax.train.run_setup import build_run

    directory = point_dir(context, name)
    cached = directory / MEASUREMENTS
    if cached.exists():
        return json.loads(cached.read_text())
    spec = context.spec
    config = training_config(context.experiment, context.scale, overrides)
    run = build_run(config)
    model, variables = load_train_workdir(str(directory))
    model_config = model.config
    batches = measure.eval_batches(run, spec.eval_batches)
    eval_ce, routed = measure.eval_loss_and_active_experts(model_config, variables, batches)
    train_flops = measure.train_flops_per_token(run)
    inference = measure.inference_costs(model_config, variables, config.seq_len, spec.decode_batch)
    sweep_row = point_row(name, {}, {"status": "done"}, directory)
    values = {
        "active_params": measure.active_parameters(model_config, routed),
        "routed_experts": routed,
        "final_train_ce": sweep_row.get("final_ce_loss"),
        "eval_ce": eval_ce,
        "train_flops": train_flops["average"],
        "train_flops_by_stage": {k: v for k, v in train_flops.items() if k != "average"},
        "train_flops_formula": training_flops_per_token(model_config, config.seq_len),
        "prefill_flops": inference["prefill"],
        "decode_flops": inference["decode"],
        "train_tokens_per_s": sweep_row.get("tokens_per_second"),
        "decode_tokens_per_s": inference["decode_tokens_per_s"],
    }
    cached.write_text(json.dumps(values, indent=1) + "\n")
    return values


def _dense_curve(rows: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """(FLOPs per token, eval loss) of the dense baseline per size, seeds averaged."""
    by_size: dict[str, list[dict]] = {}
    for row in rows:
        if row["variant"] == "dense" and row.get("eval_ce") is not None:
            by_size.setdefault(row["size"], []).append(row)
    return [(statistics.mean(r[key] for r in group), statistics.mean(r["eval_ce"] for r in group))
            for group in by_size.values()]


def build(context: Context) -> Table:
    spec = context.spec
    rows_spec = points(context)
    statuses = train_points(context, {name: overrides for name, (_, overrides) in rows_spec.items()})
    rows = []
    for name, (identity, overrides) in rows_spec.items():
        status = statuses[name].get("status", "pending")
        row = {**identity, "status": status}
        if status == "done":
            row.update(measure_row(context, name, overrides))
        elif statuses[name].get("error"):
            row["error"] = statuses[name]["error"].splitlines()[-1]
        row["provenance"] = row_provenance(context, name, overrides, identity["seed"])
        rows.append(row)
    for key, column in (("train_flops", "iso_loss_train"), ("prefill_flops", "iso_loss_inference")):
        dense = _dense_curve(rows, key)
        for row in rows:
            if row.get("eval_ce") is not None and row["variant"] != "dense":
                row[column] = iso_loss_ratio(row[key], row["eval_ce"], dense)
    plots = [_plot(context, rows)]
    comparison = _comparison(rows, spec)
    complete = all(r["status"] == "done" for r in rows)
    return Table(
        name="cost", title="Cost: dense vs MoE vs MoE + DSA vs dynamic router", scale=context.scale,
        paper=list(spec.paper), columns=COLUMNS, rows=rows, comparison=comparison, plots=plots,
        notes=_notes(spec), status="complete" if complete else "incomplete")


def _median_ratio(rows: list[dict], variant: str, column: str) -> float | None:
    values = [r[column] for r in rows if r["variant"] == variant and r.get(column) is not None]
    return statistics.median(values) if values else None


def _comparison(rows: list[dict], spec) -> list[dict[str, Any]]:
    inference_claim, compute_claim = spec.paper[0]["value"], spec.paper[1]["value"]
    comparison = []
    for variant in ("moe", "moe_dsa", "moe_dynamic"):
        in_range = sum(1 for r in rows if r["variant"] == variant and r.get("iso_loss_inference") is not None)
        total = sum(1 for r in rows if r["variant"] == variant)
        comparison.append({
            "quantity": f"{variant}: iso-loss inference (prefill) FLOPs vs dense (median over sizes)",
            "paper": inference_claim, "ours": _median_ratio(rows, variant, "iso_loss_inference"),
            "note": f"{in_range} of {total} rows inside the dense sizes' loss range"})
        comparison.append({
            "quantity": f"{variant}: iso-loss training FLOPs vs dense (median over sizes)",
            "paper": compute_claim, "ours": _median_ratio(rows, variant, "iso_loss_train"),
            "note": f"{sum(1 for r in rows if r['variant'] == variant and r.get('iso_loss_train') is not None)} "
                    f"of {total} rows inside the dense sizes' loss range"})
    return comparison


def _notes(spec) -> list[str]:
    return [
        ("eval CE: token-weighted cross entropy on the same fixed batches for every row (the training "
        "corpus read in another order, measure.EVAL_DATA_SEED; not a held-out split). final train CE: "
        "the last logged window's mean."),
        ("Compiled FLOPs: every dot of the compiled CPU program with loop trip counts applied "
        "(plan/hlo_flops.py); XLA's cost_analysis counts a loop body once. The train step includes "
        "the indexer's distillation loss (all rows) and the optimizer; the CPU MoE pads each expert's rows "
        "to blocks of 16 (model/blocked_experts.py), and a dynamic-router row is compiled for k_max slots, "
        "so its compiled FLOPs do not shrink with the experts it drops: its measured routed experts/token "
        "is in active params/token."),
        (f"Decode: one step of batch {spec.decode_batch} with the training length cached (its FLOPs and, "
        "best of 3, its wall time: decode tokens/s = batch / step time); prefill: a batch of full-length "
        "prompts. tokens/s are wall-clock on a shared host: read them against the load average below."),
        ("iso-loss ratio: the row's FLOPs/token over the dense baseline's at the row's eval CE, "
        "log-FLOPs interpolated between dense sizes; n/a outside their range (reproduce/iso_loss.py). "
        "Inference compute is the prefill's FLOPs/token (a forward pass over a full-length prompt): the "
        "decode step's batch of 8 has 16 routed rows, which the CPU MoE pads to a block per expert, so "
        "its MoE FLOPs measure that padding more than the architecture."),
    ]


def _plot(context: Context, rows: list[dict]) -> str:
    from matplotlib.ticker import FuncFormatter, LogLocator

    name = "loss_vs_flops.png"
    with figure(context.workdir / name, size=(11, 4.5), columns=2) as (train_axes, inference_axes):
        for axes, key, label in ((train_axes, "train_flops", "training FLOPs/token (compiled step)"),
                                 (inference_axes, "prefill_flops", "inference FLOPs/token (compiled prefill)")):
            for variant in dict.fromkeys(r["variant"] for r in rows):
                points = sorted((r[key], r["eval_ce"]) for r in rows
                                if r["variant"] == variant and r.get("eval_ce") is not None
                                and r.get(key) and math.isfinite(r[key]))
                if points:
                    axes.plot(*zip(*points), marker="o", label=variant)
            axes.set_xscale("log")
            # A range inside one decade: label 1, 2, 3, 5 x 10^n, not every minor tick.
            axes.xaxis.set_minor_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
            axes.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:.0e}"))
            axes.set_xlabel(label)
            axes.set_ylabel("eval cross entropy")
        train_axes.set_title(f"cost table, scale {context.scale}: loss against compute")
    return name
