"""Table 3, code benchmarks: HumanEval and MBPP pass@k of our models beside the paper's table.

For each model (the pretrained small model; the model after RL when ``rl_checkpoint`` names
one) and benchmark: n samples per problem are generated (``glm5_jax.sample``, temperature
and top-p from the spec, prompts cut to the model's context), written as a samples file, and
scored by glm5-eval itself (``python -m glm5_jax.eval.cli``: every sample in the sandbox),
whose pass@k line is the row's number. Samples and results stay in the model's directory, so
a rerun re-reads them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from glm5_jax.reproduce.context import Context
from glm5_jax.reproduce.plots import figure
from glm5_jax.reproduce.pretrained import (
    TrainedModel,
    fixed_length_prompts,
    load,
    points,
    trained_models,
)
from glm5_jax.reproduce.scales import REPO
from glm5_jax.reproduce.table_files import Table

# Where a HumanEval completion ends: the next top-level statement (the human-eval paper's stops).
HUMANEVAL_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
BENCHMARKS = ("humaneval", "mbpp")
EVAL_TIMEOUT_S = 3600
# Sampling keys: request i of a benchmark is (seed, offset + i), so the benchmarks draw apart.
REQUEST_OFFSET = {"humaneval": 0, "mbpp": 1_000_000}

__all__ = ["build", "points"]


def _problems(benchmark: str, count: int) -> list[tuple[Any, str]]:
    """(task id, prompt text) of the benchmark's first ``count`` problems."""
    if benchmark == "humaneval":
        from glm5_jax.eval.humaneval import load_humaneval

        return [(task_id, p.prompt) for task_id, p in list(load_humaneval().items())[:count]]
    from glm5_jax.eval.mbpp import load_mbpp
    from glm5_jax.eval.prompts import mbpp_zero_shot_prompt

    return [(task_id, mbpp_zero_shot_prompt(p)) for task_id, p in list(load_mbpp("test").items())[:count]]


def completion_from(benchmark: str, generated: str) -> str:
    if benchmark == "humaneval":
        cut = min((i for i in (generated.find(s) for s in HUMANEVAL_STOPS) if i >= 0), default=len(generated))
        return generated[:cut]
    from glm5_jax.eval.prompts import mbpp_completion_from_generation

    return mbpp_completion_from_generation(generated)


def _parses(program: str) -> bool:
    try:
        ast.parse(program)
    except (SyntaxError, ValueError):
        return False
    return True


def generate_samples(context: Context, model_config, variables, tokenizer, benchmark: str,
                     path: Path) -> None:
    """n completions per problem into ``path`` ({"task_id", "completion", "program_parses"})."""
    from glm5_jax.sample import run_batch

    spec = context.spec
    count = spec.humaneval_problems if benchmark == "humaneval" else spec.mbpp_problems
    problems = _problems(benchmark, count)
    requests = [(task_id, text) for task_id, text in problems for _ in range(spec.samples_per_problem)]
    prompts = fixed_length_prompts(tokenizer, [text for _, text in requests], spec.prompt_tokens)
    lines = []
    for start in range(0, len(requests), spec.batch):
        context.echo(f"[{benchmark}] sampling {start}/{len(requests)}")
        chunk = prompts[start:start + spec.batch]
        chunk += [chunk[-1]] * (spec.batch - len(chunk))  # one shape for every call
        result = run_batch(model_config, variables, chunk, spec.new_tokens, temperature=spec.temperature,
                           top_p=spec.top_p, seed=spec.seeds[0], eos_token_id=None,
                           first_request=REQUEST_OFFSET[benchmark] + start)
        for (task_id, text), generation in zip(requests[start:start + spec.batch], result.generations):
            completion = completion_from(benchmark, tokenizer.decode(generation.token_ids))
            program = text + completion if benchmark == "humaneval" else completion
            lines.append(json.dumps({"task_id": task_id, "completion": completion,
                                     "program_parses": _parses(program)}))
    path.write_text("\n".join(lines) + "\n")


def glm5_eval(benchmark: str, samples: Path, ks, workers: int) -> dict[str, float]:
    """glm5-eval's pass@k line for a samples file (the command line itself, in the sandbox)."""
    command = [sys.executable, "-m", "glm5_jax.eval.cli", benchmark, "--samples", str(samples),
               "--k", ",".join(str(k) for k in ks), "--workers", str(workers)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=EVAL_TIMEOUT_S,
                            check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"glm5-eval {benchmark} failed ({result.returncode}): {result.stderr[-500:]}")
    return json.loads(lines[-1])


def measure(context: Context, model: TrainedModel, workdir_for_samples: Path) -> dict[str, Any]:
    spec = context.spec
    settings = {k: spec[k] for k in ("humaneval_problems", "mbpp_problems", "samples_per_problem",
                                     "temperature", "top_p", "prompt_tokens", "new_tokens")}
    cached = workdir_for_samples / "code_benchmarks.json"
    if cached.exists() and json.loads(cached.read_text())["settings"] == settings:
        return json.loads(cached.read_text())["values"]
    workdir_for_samples.mkdir(parents=True, exist_ok=True)
    model_config, variables, tokenizer = load(model.workdir)
    values: dict[str, Any] = {}
    for benchmark in BENCHMARKS:
        samples = workdir_for_samples / f"samples_{benchmark}.jsonl"
        generate_samples(context, model_config, variables, tokenizer, benchmark, samples)
        context.echo(f"[{benchmark}] glm5-eval on {samples}")
        figures = glm5_eval(benchmark, samples, spec.ks, spec.sandbox_workers)
        records = [json.loads(line) for line in samples.read_text().splitlines()]
        for k in spec.ks:
            values[f"{benchmark}_pass@{k}"] = 100.0 * figures[f"pass@{k}"] if f"pass@{k}" in figures else None
        values[f"{benchmark}_parses"] = 100.0 * sum(r["program_parses"] for r in records) / len(records)
        values[f"{benchmark}_samples"] = len(records)
    cached.write_text(json.dumps({"settings": settings, "values": values}, indent=1) + "\n")
    return values


def _rl_model(context: Context) -> TrainedModel | None:
    directory = context.spec.get("rl_checkpoint")
    if not directory:
        return None
    return TrainedModel("after_rl", None, "done", Path(directory).absolute(),
                        {"config": None, "overrides": {}, "seed": None, "commit": None,
                         "workdir": str(Path(directory).absolute())})


def build(context: Context) -> Table:
    spec = context.spec
    rows: list[dict[str, Any]] = [
        {"model": p["model"], "kind": "published", "status": "quoted" if p["humaneval_pass@1"] else "not quoted",
         "humaneval_pass@1": p["humaneval_pass@1"], "mbpp_pass@1": p["mbpp_pass@1"], "source": p["source"]}
        for p in spec.published]
    models = [(m, "pretrained (ours)") for m in trained_models(context)]
    rl = _rl_model(context)
    if rl is not None:
        models.append((rl, "after RL (ours)"))
    for model, kind in models:
        row = {"model": model.name, "kind": kind, "status": model.status, "provenance": model.provenance}
        if model.status == "done":
            row.update(measure(context, model, context.workdir / "samples" / model.name))
        else:
            row["error"] = model.error
        rows.append(row)
    if rl is None:
        rows.append({"model": "after RL", "kind": "after RL (ours)", "status": "not measured",
                     "source": "no RL checkpoint given (--table.rl_checkpoint=DIR)"})
    ks = list(spec.ks)
    columns = ([("model", "model"), ("kind", "kind"), ("status", "status")]
               + [(f"{b}_pass@{k}", f"{'HumanEval' if b == 'humaneval' else 'MBPP'} pass@{k} (%)")
                  for b in BENCHMARKS for k in ks]
               + [(f"{b}_parses", f"{b} samples that parse (%)") for b in BENCHMARKS]
               + [("source", "source")])
    ours = [r for r in rows if r["kind"] == "pretrained (ours)" and r["status"] == "done"]
    comparison = [{"quantity": f"{name} pass@1 (%)", "paper": claim["value"],
                   "ours": ours[0].get(f"{key}_pass@1") if ours else None,
                   "note": f"{ours[0].get(f'{key}_samples') if ours else 0} samples of "
                           f"{spec.humaneval_problems if key == 'humaneval' else spec.mbpp_problems} problems"}
                  for (name, key), claim in zip((("HumanEval", "humaneval"), ("MBPP", "mbpp")), spec.paper)]
    notes = [
        (f"Ours: {spec.samples_per_problem} samples per problem at temperature {spec.temperature}, top-p "
         f"{spec.top_p}, {spec.new_tokens} new tokens from the prompt's last {spec.prompt_tokens} tokens "
         "(shorter prompts preceded by blank lines); HumanEval completions cut at the next top-level "
         "statement, MBPP (zero-shot prompt, the paper's format) at [DONE]. pass@k by glm5-eval's unbiased "
         f"estimator; the first {spec.humaneval_problems} HumanEval problems and the first "
         f"{spec.mbpp_problems} of MBPP's 500 test problems."),
        ("'samples that parse': the program (HumanEval: prompt + completion) is valid Python, a signal "
         "of how far the model is from passing when pass@k is zero."),
    ]
    complete = all(r["status"] == "done" for r in rows if r["kind"] == "pretrained (ours)")
    return Table(name="code_benchmarks", title="Code benchmarks: HumanEval and MBPP pass@k",
                 scale=context.scale, paper=list(spec.paper), columns=columns, rows=rows,
                 comparison=comparison, plots=[_plot(context, rows)], notes=notes,
                 status="complete" if complete else "incomplete")


def _plot(context: Context, rows: list[dict]) -> str:
    name = "pass_at_1.png"
    shown = [r for r in rows if r.get("humaneval_pass@1") is not None or r.get("mbpp_pass@1") is not None]
    with figure(context.workdir / name) as axes:
        width = 0.38
        positions = range(len(shown))
        for offset, (key, label) in enumerate((("humaneval_pass@1", "HumanEval"), ("mbpp_pass@1", "MBPP"))):
            heights = [r.get(key) or 0.0 for r in shown]
            bars = axes.bar([p + (offset - 0.5) * width for p in positions], heights, width, label=label)
            axes.bar_label(bars, labels=[f"{h:.1f}" for h in heights], fontsize=7)
        axes.set_xticks(list(positions), [r["model"] for r in shown], fontsize=8)
        axes.set_ylabel("pass@1 (%)")
        axes.set_title(f"code_benchmarks, scale {context.scale}: paper vs ours")
    return name
