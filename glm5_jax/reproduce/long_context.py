"""Table 2, long context: dense MLA vs DSA on multi-key recall, accuracy against prompt length.

Both rows (``experiments/paper/long_context.py``) train on the same retrieval documents with
the same seed; then each is scored on the same prompts at every evaluation length
(``retrieval_task.py``: teacher-forced exact match of the answer), and its prefill (batch 1)
is timed against prompt length: the paper's limitation is DSA's routing overhead on short
prompts. Retention is accuracy at the long length over accuracy at the short one.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from glm5_jax.reproduce.context import Context
from glm5_jax.reproduce.corpora import corpus_overrides
from glm5_jax.reproduce.experiment_files import merge
from glm5_jax.reproduce.plots import figure
from glm5_jax.reproduce.points import point_dir, row_provenance, train_points
from glm5_jax.reproduce.table_files import Table

MEASUREMENTS = "long_context.json"
EVAL_TOKENS = 8 * 1024  # tokens per forward pass (prompts of 8K go one at a time: ~4.5 GB on CPU)
PAD_MULTIPLE = 128  # prompts of one length are padded to one shape: one compile per length


def points(context: Context) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    spec = context.spec
    shared = corpus_overrides(context, spec) if context.scale != "pod" else {}
    return {f"{row}-seed{seed}": ({"row": row, "seed": seed}, merge(overrides, {"seed": seed}, shared))
            for row, overrides in spec.rows.items() for seed in spec.seeds}


def attention_at(model_config, spec, length: int):
    """The row's attention at ``length`` keys: a row trained with every key selected
    (index_topk >= the training length) is a dense-attention model and stays dense at every
    length; a DSA row keeps its index_topk."""
    if model_config.index_topk >= spec.train_length:
        return model_config.replace(index_topk=max(model_config.index_topk, length))
    return model_config


def accuracy_key(keys: int, length: int) -> str:
    return f"acc_k{keys}_{length}"


def retention_key(keys: int) -> str:
    return f"retention_k{keys}"


def _accuracy_at(model_config, variables, tokenizer, spec, keys: int, length: int) -> float:
    """Fraction of the length's ``keys``-key prompts whose answer the model reproduces exactly."""
    import jax
    import jax.numpy as jnp

    from glm5_jax.model import GLM5Model
    from glm5_jax.reproduce.retrieval_task import (
        accuracy,
        answer_positions,
        evaluation_prompts,
    )

    examples = evaluation_prompts(keys, tokenizer, length, spec.eval_prompts, spec.eval_seed)
    encoded = [answer_positions(tokenizer, e) for e in examples]
    width = -(-max(len(ids) for ids, _ in encoded) // PAD_MULTIPLE) * PAD_MULTIPLE
    model = GLM5Model(attention_at(model_config, spec, width))
    predict = jax.jit(lambda v, ids, seg: jnp.argmax(model.apply(v, ids, None, seg), axis=-1))
    correct = []
    batch = max(1, EVAL_TOKENS // width)
    for start in range(0, len(encoded), batch):
        chunk = encoded[start:start + batch]
        ids = np.zeros((batch, width), np.int32)
        segments = np.zeros((batch, width), np.int32)
        for i, (tokens, _) in enumerate(chunk):
            ids[i, :len(tokens)], segments[i, :len(tokens)] = tokens, 1
        predicted = np.asarray(predict(variables, jnp.asarray(ids), jnp.asarray(segments)))
        for i, (tokens, answer) in enumerate(chunk):
            correct.append(all(predicted[i, t - 1] == tokens[t] for t in answer))
    return accuracy(correct)


def _prefill_seconds(model_config, variables, spec, length: int) -> float:
    import jax
    import jax.numpy as jnp

    from glm5_jax.reproduce.measure import timed
    from glm5_jax.sample import CachedGLM5, init_cache

    model_config = attention_at(model_config, spec, length)
    model = CachedGLM5(model_config, fresh=True)
    cache = init_cache(model_config, 1, length)
    tokens = jnp.ones((1, length), jnp.int32)
    positions = jnp.arange(length, dtype=jnp.int32)[None]
    last = jnp.full((1,), length - 1, jnp.int32)
    prefill = jax.jit(lambda v, t, p, c, i: model.apply(v, t, p, c, i))
    return timed(lambda: prefill(variables, tokens, positions, cache, last), repeats=2)


def measure_row(context: Context, name: str) -> dict[str, Any]:
    from glm5_jax.data.tokenizer import document_tokenizer, load_tokenizer
    from glm5_jax.sample.checkpoint import load_train_workdir
    from glm5_jax.sweep.results import point_row

    directory = point_dir(context, name)
    cached = directory / MEASUREMENTS  # written after every length: an interrupted row resumes
    settings = {"eval_prompts": context.spec.eval_prompts, "eval_seed": context.spec.eval_seed,
                "eval_keys": list(context.spec.eval_keys),
                "task": context.spec.task.to_dict()}
    values: dict[str, Any] = json.loads(cached.read_text()) if cached.exists() else {}
    if values.get("settings") != settings:
        values = {"settings": settings}
    wanted = ([accuracy_key(k, n) for k in context.spec.eval_keys for n in context.spec.eval_lengths]
              + [f"prefill_s_{n}" for n in context.spec.latency_lengths])
    if all(key in values for key in wanted):
        return values
    spec = context.spec
    model, variables = load_train_workdir(str(directory))
    tokenizer = document_tokenizer(load_tokenizer(directory / "tokenizer.json"))
    values.update(final_train_ce=point_row(name, {}, {}, directory).get("final_ce_loss"),
                  index_topk=model.config.index_topk)
    for keys in spec.eval_keys:
        for length in spec.eval_lengths:
            if accuracy_key(keys, length) not in values:
                context.echo(f"[{name}] retrieval of 1 of {keys} keys at {length} tokens")
                values[accuracy_key(keys, length)] = _accuracy_at(
                    model.config, variables, tokenizer, spec, keys, length)
                cached.write_text(json.dumps(values, indent=1) + "\n")
    for length in spec.latency_lengths:
        if f"prefill_s_{length}" not in values:
            values[f"prefill_s_{length}"] = _prefill_seconds(model.config, variables, spec, length)
    cached.write_text(json.dumps(values, indent=1) + "\n")
    return values


def build(context: Context) -> Table:
    spec = context.spec
    rows_spec = points(context)
    statuses = train_points(context, {name: overrides for name, (_, overrides) in rows_spec.items()})
    rows = []
    short, long = spec.retention
    for name, (identity, overrides) in rows_spec.items():
        status = statuses[name].get("status", "pending")
        row = {**identity, "status": status}
        if status == "done":
            row.update(measure_row(context, name))
            for keys in spec.eval_keys:
                base = row.get(accuracy_key(keys, short))
                row[retention_key(keys)] = row[accuracy_key(keys, long)] / base if base else None
        elif statuses[name].get("error"):
            row["error"] = statuses[name]["error"].splitlines()[-1]
        row["provenance"] = row_provenance(context, name, overrides, identity["seed"])
        rows.append(row)
    columns = ([("row", "row"), ("seed", "seed"), ("status", "status"), ("index_topk", "index_topk"),
                ("final_train_ce", "final train CE")]
               + [(accuracy_key(k, n), f"acc {k}-key @{n}") for k in spec.eval_keys for n in spec.eval_lengths]
               + [(retention_key(k), f"{k}-key retention {long}/{short}") for k in spec.eval_keys]
               + [(f"prefill_s_{n}", f"prefill s @{n}") for n in spec.latency_lengths])
    plots = [_plot(context, rows)]
    comparison = []
    for keys in spec.eval_keys:
        for row in rows:
            comparison.append({
                "quantity": f"{row['row']}: {_task_name(keys)} retention, accuracy at {long} / at {short}",
                "paper": spec.paper[0]["value"], "ours": row.get(retention_key(keys)),
                "note": f"accuracy at {short}: {_fmt(row.get(accuracy_key(keys, short)))}"})
    notes = [
        ("Task: one-letter keys set to one-digit values (v.q = 7) at random depths in code-like filler (a "
         "fixed cycle of lines); the last line asks for one (assert v.q ==; chance 0.1). With 1 key it is a "
         "single needle in a haystack (find the one assignment); with several, multi-key recall (find the "
         "assignment of the key asked for). A prompt is correct when the argmax at every answer token is the "
         f"answer (= greedy decoding of it). {spec.eval_prompts} prompts per length and key count, the same "
         f"for both rows. Training documents have {spec.task.min_keys}..{spec.task.num_keys} keys and "
         f"{spec.task.min_lines}..{spec.task.max_lines} filler lines, every key asked for, the loss on the "
         f"answers only (final train CE is that answer CE); both rows trained at {spec.train_length} tokens, "
         "so every longer length tests length generalisation."),
        ("prefill s: best of 2 timed calls of the compiled prefill (batch 1, the row's attention: dense "
         "MLA blockwise; DSA: the indexer's top-k gathered, dense while the prompt fits in index_topk); "
         "wall-clock on a shared host (load average below)."),
    ]
    complete = all(r["status"] == "done" for r in rows)
    return Table(name="long_context", title="Long context: dense MLA vs DSA on key retrieval in code-like filler",
                 scale=context.scale, paper=list(spec.paper), columns=columns, rows=rows,
                 comparison=comparison, plots=plots, notes=notes,
                 status="complete" if complete else "incomplete")


def _task_name(keys: int) -> str:
    return "single-needle" if keys == 1 else f"{keys}-key recall"


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _plot(context: Context, rows: list[dict]) -> str:
    spec = context.spec
    name = "accuracy_and_prefill_vs_length.png"
    with figure(context.workdir / name, size=(11, 4.5), columns=2) as (accuracy_axes, latency_axes):
        for row in rows:
            if row["status"] != "done":
                continue
            label = f"{row['row']} (seed {row['seed']})"
            for keys, style in zip(spec.eval_keys, ("-", "--", ":", "-."), strict=False):
                accuracy_axes.plot(spec.eval_lengths, [row[accuracy_key(keys, n)] for n in spec.eval_lengths],
                                   marker="o", linestyle=style, label=f"{label}, {_task_name(keys)}")
            latency_axes.plot(spec.latency_lengths, [row[f"prefill_s_{n}"] for n in spec.latency_lengths],
                              marker="o", label=label)
        accuracy_axes.axvline(spec.train_length, color="grey", linestyle=":", label="training length")
        accuracy_axes.set_xscale("log", base=2)
        accuracy_axes.set_ylim(-0.05, 1.05)
        accuracy_axes.set_xlabel("prompt tokens")
        accuracy_axes.set_ylabel("retrieval accuracy (exact answer)")
        accuracy_axes.set_title(f"long_context, scale {context.scale}")
        latency_axes.set_xscale("log", base=2)
        latency_axes.set_yscale("log")
        latency_axes.set_xlabel("prompt tokens")
        latency_axes.set_ylabel("prefill seconds (batch 1)")
    return name
