"""Table 5, MTP acceptance: accepted length and decode speedup against speculative steps.

The pretrained small model (``pretrained.py``) decodes the same prompts (the first HumanEval
prompts, cut to a fixed number of tokens) without drafts and with 1-4 MTP drafts per step, at
each temperature of the spec (0: greedy; 1: sampling, verified by rejection sampling so the
output distribution is the model's). Accepted length = tokens emitted per main-model step;
speedup = decode tokens/s over the same temperature's tokens/s without drafts.
"""

from __future__ import annotations

import json
import time
from typing import Any

from glm5_jax.reproduce.context import Context
from glm5_jax.reproduce.plots import figure
from glm5_jax.reproduce.pretrained import (
    fixed_length_prompts,
    load,
    points,
    trained_models,
)
from glm5_jax.reproduce.table_files import Table

MEASUREMENTS = "mtp_acceptance.json"
COLUMNS = [("model", "model"), ("seed", "seed"), ("status", "status"), ("temperature", "temperature"),
           ("speculative_steps", "draft steps"), ("accept_length", "accepted length (tokens/step)"),
           ("tokens_per_s", "decode tokens/s"), ("speedup", "speedup vs no drafts")]

__all__ = ["build", "points"]


def _humaneval_prompts(count: int) -> list[str]:
    from glm5_jax.eval.humaneval import load_humaneval

    return [problem.prompt for problem in list(load_humaneval().values())[:count]]


def measure(context: Context, model) -> list[dict[str, Any]]:
    """Accepted length per (temperature, draft steps), and decode tokens/s timed in rounds that
    visit every setting in turn (a shared host's load then falls on all settings alike; the
    best round of each counts)."""
    from glm5_jax.sample import run_batch

    cached = model.workdir / MEASUREMENTS
    spec = context.spec
    key = {"prompts": spec.prompts, "prompt_tokens": spec.prompt_tokens, "new_tokens": spec.new_tokens,
           "temperatures": list(spec.temperatures), "steps": list(spec.speculative_steps),
           "timing_rounds": spec.timing_rounds}
    if cached.exists() and json.loads(cached.read_text())["settings"] == key:
        return json.loads(cached.read_text())["rows"]
    config, variables, tokenizer = load(model.workdir)
    prompts = fixed_length_prompts(tokenizer, _humaneval_prompts(spec.prompts), spec.prompt_tokens)
    settings = [(t, s) for t in spec.temperatures for s in (0, *spec.speculative_steps)]

    def decode(temperature: float, steps: int):
        return run_batch(config, variables, prompts, spec.new_tokens, temperature=temperature, seed=0,
                         eos_token_id=None, speculative_steps=steps)

    accepted, generated = {}, {}
    for temperature, steps in settings:  # compiles each setting; the accepted length is exact
        context.echo(f"[{model.name}] temperature {temperature}, {steps} draft steps")
        result = decode(temperature, steps)
        accepted[temperature, steps] = result.mean_accepted_length
        generated[temperature, steps] = sum(len(g.token_ids) for g in result.generations)
    best = dict.fromkeys(settings, float("inf"))
    for _ in range(spec.timing_rounds):
        for setting in settings:
            start = time.perf_counter()
            decode(*setting)
            best[setting] = min(best[setting], time.perf_counter() - start)
    rows = []
    for temperature, steps in settings:
        speed = generated[temperature, steps] / best[temperature, steps]
        baseline = generated[temperature, 0] / best[temperature, 0]
        rows.append({"temperature": temperature, "speculative_steps": steps,
                     "accept_length": accepted[temperature, steps], "tokens_per_s": speed,
                     "speedup": speed / baseline})
    cached.write_text(json.dumps({"settings": key, "rows": rows}, indent=1) + "\n")
    return rows


def build(context: Context) -> Table:
    spec = context.spec
    rows = []
    for model in trained_models(context):
        identity = {"model": model.name, "seed": model.seed, "status": model.status,
                    "provenance": model.provenance}
        if model.status != "done":
            rows.append({**identity, "error": model.error})
            continue
        rows += [{**identity, **measured} for measured in measure(context, model)]
    comparison = []
    for row in rows:
        if row.get("speculative_steps") == max(spec.speculative_steps):
            comparison.append({"quantity": f"accepted length, {row['speculative_steps']} draft steps, "
                                           f"temperature {row['temperature']} ({row['model']})",
                               "paper": spec.paper[0]["value"], "ours": row["accept_length"],
                               "note": f"DeepSeek-V3.2 (as quoted): {spec.paper[1]['value']}; decode speedup "
                                       f"here {row['speedup']:.2f}x"})
    notes = [
        (f"Prompts: the first {spec.prompts} HumanEval prompts, their last {spec.prompt_tokens} tokens "
         f"(shorter ones preceded by blank lines), {spec.new_tokens} new tokens each, all in one batch; "
         "EOS ignored so every row decodes the same number of tokens."),
        ("The MTP module is shared over its 3 trained steps; 4 draft steps apply it a fourth time, as "
         f"GLM-5 does. Decode tokens/s: the best of {spec.timing_rounds} rounds, each timing every setting "
         "once in turn after a compiling call, wall-clock on a shared host (load average below)."),
    ]
    complete = bool(rows) and all(r["status"] == "done" for r in rows)
    return Table(name="mtp_acceptance", title="MTP acceptance: accepted length against draft steps",
                 scale=context.scale, paper=list(spec.paper), columns=COLUMNS, rows=rows,
                 comparison=comparison, plots=[_plot(context, rows)], notes=notes,
                 status="complete" if complete else "incomplete")


def _plot(context: Context, rows: list[dict]) -> str:
    spec = context.spec
    name = "accept_length_vs_steps.png"
    with figure(context.workdir / name, size=(11, 4.5), columns=2) as (accept_axes, speed_axes):
        for temperature in spec.temperatures:
            measured = sorted((r["speculative_steps"], r["accept_length"], r["speedup"]) for r in rows
                              if r.get("temperature") == temperature)
            if measured:
                steps, accepted, speedup = zip(*measured)
                accept_axes.plot(steps, accepted, marker="o", label=f"ours, temperature {temperature}")
                speed_axes.plot(steps, speedup, marker="o", label=f"ours, temperature {temperature}")
        top = max(spec.speculative_steps)
        accept_axes.scatter([top], [spec.paper[0]["value"]], marker="*", s=120, color="black",
                            label="GLM-5 (paper)")
        accept_axes.scatter([top], [spec.paper[1]["value"]], marker="x", s=80, color="grey",
                            label="DeepSeek-V3.2 (as quoted)")
        accept_axes.set_xlabel("draft steps")
        accept_axes.set_ylabel("accepted length (tokens per main-model step)")
        accept_axes.set_title(f"mtp_acceptance, scale {context.scale}")
        speed_axes.axhline(1.0, color="grey", linestyle=":")
        speed_axes.set_xlabel("draft steps")
        speed_axes.set_ylabel("decode speedup vs no drafts (CPU)")
    return name
