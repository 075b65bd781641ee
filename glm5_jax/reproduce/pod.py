"""The pod scale of a table: its rows' configs and the commands that would train and plan them.

Nobody here has a pod, so ``--scale=pod`` runs nothing by default: it writes each row's
resolved training config (DIR/pod/<row>.json), DIR/pod/commands.sh (one ``launch/tpu.py``
training command and one ``python -m glm5_jax.plan`` command per row, with the row's
topology), and a table of what can be known without a pod: parameters, active parameters and
the formula's FLOPs per token. With ``--plan`` it also compiles every row for its topology
with ``glm5_jax.plan`` (libtpu, minutes per row) and adds the planner's verdict: fits, peak
HBM per chip, roofline step time and MFU.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glm5_jax.reproduce.context import Context
from glm5_jax.reproduce.experiment_files import flatten, training_config
from glm5_jax.reproduce.plots import figure
from glm5_jax.reproduce.scales import REPO
from glm5_jax.reproduce.table_files import Table
from glm5_jax.run_info import git_commit
from glm5_jax.sweep.grid import override_flags

PLAN_TIMEOUT_S = 3600
COLUMNS = [("row", "row"), ("topology", "topology"), ("total_params", "parameters"),
           ("active_params", "active params/token"), ("train_flops_formula", "train FLOPs/token (formula)"),
           ("fits", "fits (planner)"), ("peak_gib", "peak GiB/chip (planner)"),
           ("worst_stage", "largest stage (planner)"), ("step_s", "roofline step s, slowest stage (planner)"),
           ("mfu", "roofline MFU, slowest stage (planner)"), ("stage_step_s", "roofline step s by stage (planner)")]


def commands(context: Context, name: str, overrides: dict[str, Any], topology: str) -> tuple[list[str], list[str]]:
    """(training command through launch/tpu.py, planner command) for one row."""
    flags = override_flags(flatten(overrides))
    workdir = f"gs://YOUR_BUCKET/repro/{context.name}/{name}"
    train = ["python", "launch/tpu.py", "--mode=xpk", "--xpk_cluster=YOUR_CLUSTER", f"--tpu_type={topology}",
             "--num_slices=1", "--zone=YOUR_ZONE", "--image=YOUR_IMAGE", f"--workdir={workdir}", "--",
             "python", "-m", "glm5_jax.train", f"--config={context.config_argument}", f"--workdir={workdir}", *flags]
    plan = ["python", "-m", "glm5_jax.plan", f"--config={context.config_argument}", f"--topology={topology}",
            "--json", *flags]
    return train, plan


def run_planner(plan_command: list[str]) -> dict[str, Any]:
    """The planner's JSON line, or {"error": ...}."""
    result = subprocess.run([sys.executable, *plan_command[1:]], cwd=REPO, capture_output=True, text=True,
                            timeout=PLAN_TIMEOUT_S, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": (result.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def saved_plan(path: Path, config_json: str, plan_command: list[str]) -> dict[str, Any] | None:
    """A row's earlier verdict (``--plan`` resumes), if it was planned from the same config and
    command; None otherwise (a changed config or command plans again)."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("config") != config_json or saved.get("command") != plan_command:
        return None
    return saved["plan"]


def save_plan(path: Path, config_json: str, plan_command: list[str], planned: dict[str, Any]) -> None:
    """Keep a row's verdict with the commit that planned it (``plan["commit"]``), written whole
    and then renamed: an interrupted write leaves none."""
    planned["commit"] = git_commit()
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"config": config_json, "command": plan_command, "plan": planned}) + "\n")
    partial.replace(path)


def planner_columns(planned: dict[str, Any]) -> dict[str, Any]:
    """The table's planner columns from ``glm5_jax.plan --json``'s line (``Plan.to_json``)."""
    stages = planned.get("stages", {})
    return {"fits": planned.get("fits"), "peak_gib": planned.get("peak_bytes_per_device", 0) / 2**30,
            "worst_stage": planned.get("worst_stage"), "step_s": planned.get("step_seconds"),
            "mfu": planned.get("mfu"),
            "stage_step_s": " / ".join(f"{stage} {values['step_seconds']:.3g}" for stage, values in stages.items()
                                       if values.get("step_seconds") is not None) or None}


def build_pod(context: Context, points: Callable[[Context], dict[str, tuple[dict, dict]]]) -> Table:
    from glm5_jax.model.param_count import count_parameters
    from glm5_jax.train.experiment import model_config_from
    from glm5_jax.train.flops import training_flops_per_token

    pod_dir = context.workdir / "pod"
    pod_dir.mkdir(parents=True, exist_ok=True)
    script = ["#!/bin/sh", f"# {context.name} at pod scale: set YOUR_* first; run from the repository root.", ""]
    rows = []
    topologies = dict(context.spec.get("topologies", {}))
    for name, (identity, overrides) in points(context).items():
        config = training_config(context.experiment, context.scale, overrides)
        config_json = config.to_json_best_effort(indent=1) + "\n"
        (pod_dir / f"{name}.json").write_text(config_json)
        model_config = model_config_from(config, config.data.vocab_size)
        counts = count_parameters(model_config)
        topology = topologies.get(identity.get("size"), topologies.get("default", "v5p-256"))
        train, plan = commands(context, name, overrides, topology)
        script += [f"# {name}", shlex.join(train), shlex.join(plan), ""]
        row = {**identity, "row": name, "topology": topology, "total_params": counts["total_without_mtp"],
               "active_params": counts["active_per_token"],
               "train_flops_formula": training_flops_per_token(model_config, config.seq_len),
               "provenance": {"config": context.config_argument, "overrides": flatten(overrides),
                              "seed": identity.get("seed"), "commands": [shlex.join(train), shlex.join(plan)]}}
        if context.run_planner:
            plan_file = pod_dir / f"{name}.plan.json"
            planned = saved_plan(plan_file, config_json, plan)
            if planned is None:
                context.echo(f"[{name}] planning on {topology}")
                planned = run_planner(plan)
                if "error" not in planned:
                    save_plan(plan_file, config_json, plan, planned)
            else:
                context.echo(f"[{name}] planned before ({name}.plan.json)")
            row["plan"] = planned
            if "error" not in planned:
                row.update(planner_columns(planned))
        rows.append(row)
    (pod_dir / "commands.sh").write_text("\n".join(script))
    plot = "pod_flops.png"
    with figure(context.workdir / plot) as axes:
        axes.barh([r["row"] for r in rows], [r["train_flops_formula"] for r in rows])
        axes.set_xscale("log")
        axes.set_xlabel("training FLOPs per token (train/flops.py formula)")
        axes.set_title(f"{context.name} at pod scale (planned, not run)")
    notes = [("Configs: pod/<row>.json; commands: pod/commands.sh (launch/tpu.py with xpk, then "
              "glm5_jax.plan). Nothing here ran on a TPU."),
             ("Planner columns are n/a unless --plan was given (each row compiles for minutes; a row's "
              "verdict is kept in pod/<row>.plan.json and reused while its config and command are unchanged).")]
    return Table(name=context.name, title=f"{context.name} at pod scale: configs and commands",
                 scale="pod", paper=list(context.spec.get("paper", ())), columns=COLUMNS, rows=rows,
                 comparison=[], plots=[plot], notes=notes, status="planned")
