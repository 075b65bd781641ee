"""The planner's human-readable output: a per-device table and, when a stage does not
fit, one sentence saying what is over, by how much, and what to try."""

from __future__ import annotations

from glm5_jax.plan.hlo_collectives import COLLECTIVE_KINDS
from glm5_jax.plan.planner import Plan

GIB = 1 << 30


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:,.2f} GiB"


def render_table(plan: Plan) -> str:
    topology, chip = plan.topology, plan.topology.chip
    mesh = ",".join(f"{k}={v}" for k, v in plan.mesh.items() if v > 1) or "1 device"
    lines = [
        f"{plan.config.model} on {topology.name} ({topology.compiler_name}, "
        f"{topology.num_chips} chips, {gib(chip.hbm_bytes)} HBM each); mesh {mesh}; "
        f"seq {plan.config.seq_len} x batch {plan.config.batch_size}",
        f"per device: parameters {gib(plan.params_bytes)}, optimizer state "
        f"{gib(plan.optimizer_bytes)}, model FLOPs per step {plan.model_flops:.3e}",
        "",
    ]
    header = ["stage", "fits", "peak", "of HBM", "arguments", "temporaries", "HLO FLOPs",
              *COLLECTIVE_KINDS, "step (roofline)", "bound", "MFU"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in plan.stages:
        collective = ([gib(s.collectives.bytes_by_kind[k]) for k in COLLECTIVE_KINDS]
                      if s.collectives else ["-"] * len(COLLECTIVE_KINDS))
        r = s.roofline
        lines.append("| " + " | ".join([
            s.stage, "yes" if s.fits else "NO", gib(s.peak_bytes),
            f"{100 * s.peak_bytes / plan.hbm_bytes:,.0f}%", gib(s.argument_bytes),
            gib(s.temp_bytes), "-" if s.hlo_flops is None else f"{s.hlo_flops:.3e}",
            *collective, "-" if r is None else f"{r.step_s * 1e3:,.1f} ms",
            "-" if r is None else r.bound, "-" if r is None else f"{100 * r.mfu:.1f}%",
        ]) + " |")
        if s.compiler_refused:
            lines.append(f"  compiler: {s.compiler_refused}")
    lines += flops_by_part_lines(plan)
    return "\n".join(lines)


def flops_by_part_lines(plan: Plan, top: int = 12) -> list[str]:
    """Where the slowest stage's HLO matmul FLOPs go (model part, pass), as a share of them and
    as a multiple of the model's FLOPs (train.flops: 3 x forward over the active parameters)."""
    timed = [s for s in plan.stages if s.roofline is not None and s.hlo_flops_by_part]
    if not timed:
        return []
    stage = max(timed, key=lambda s: s.roofline.step_s)
    lines = ["", f"HLO matmul FLOPs of stage {stage.stage} by part (per device; model FLOPs "
             f"{plan.model_flops:.3e}):", "", "| part, pass | FLOPs | share | x model |",
             "|---|---|---|---|"]
    parts = list(stage.hlo_flops_by_part.items())
    shown = parts[:top] + ([("rest", sum(v for _, v in parts[top:]))] if len(parts) > top else [])
    for part, flops in shown:
        lines.append(f"| {part} | {flops:.3e} | {100 * flops / stage.hlo_flops:.1f}% | "
                     f"{flops / plan.model_flops:.2f} |")
    return lines


def does_not_fit_sentence(plan: Plan) -> str:
    refused = [s for s in plan.stages if not s.fits and s.peak_bytes <= plan.hbm_bytes]
    if refused:  # not HBM: the compiler could not build the program at all
        stage = refused[0]
        return (f"does not fit: the TPU compiler refused stage {stage.stage} on "
                f"{plan.topology.name} ({stage.compiler_refused}); this is a limit of one "
                "fused operation, not of HBM: try another --config.seq_len or mesh.")
    worst = plan.worst
    over = worst.peak_bytes / plan.hbm_bytes
    state = plan.params_bytes + plan.optimizer_bytes
    if state > plan.hbm_bytes:  # no batch size or remat can help: the state itself is too big
        advice = (f"the parameters and optimizer state alone take {gib(state)} per device, so "
                  "it needs more chips or a mesh that shards the weights further "
                  "(--config.mesh=fsdp=-1,expert=N)")
    else:
        advice = ("try a smaller --config.batch_size or --config.seq_len, "
                  "--config.grad_accum_steps, --config.model_overrides.remat_policy=full, "
                  "more chips, or a mesh that shards further (--config.mesh=fsdp=-1,expert=N)")
    return (f"does not fit: stage {worst.stage} needs {gib(worst.peak_bytes)} per device "
            f"against {gib(plan.hbm_bytes)} of HBM on {plan.topology.name} ({over:,.1f}x over); "
            f"{advice}.")
