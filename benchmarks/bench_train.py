"""Training throughput, MFU and the step-time split (forward / backward / optimizer) for
experiment configs, printed side by side as a markdown table.

    python benchmarks/bench_train.py --steps 20 \
        --configs experiments/tiny.py,experiments/dense_baseline.py,experiments/tiny.py@moe_impl=ragged_dot

Each config is built exactly as the main job builds it (``build_run``: the same corpus,
tokenizer, mesh and compiled step) and timed on real batches already on the device, so the
numbers are compute only. The split times three compiled programs on the same batches:
the forward pass with every loss (the train step's objective), forward + backward
(``jax.grad`` of it), and the whole step; backward = (forward + backward) - forward. The
optimizer (optax update + apply, on real gradients) is timed on its own. The whole step can
take less than the sum of the parts (one program: XLA fuses the optimizer into the backward
pass's tail and reuses donated buffers), so the split is not a partition of the step. Times
are medians over ``--steps`` calls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glm5_jax.model.param_count import count_parameters
from glm5_jax.sharding import activate
from glm5_jax.train.experiment import SPARSE, load_experiment
from glm5_jax.train.flops import peak_flops_per_device, training_flops_per_token
from glm5_jax.train.run_setup import build_run
from glm5_jax.train.train_step import make_loss_fn


def _optimizer_update(optimizer, params, opt_state, grads):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _median_seconds(fn, batches) -> float:
    times = []
    for batch in batches:
        start = time.perf_counter()
        jax.block_until_ready(fn(batch))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """"experiments/tiny.py@moe_impl=ragged_dot" -> (path, model overrides)."""
    path, *pairs = spec.split("@")
    model_overrides = dict(pair.split("=", 1) for pair in pairs)
    return path, model_overrides


def benchmark(spec: str, steps: int, overrides: dict, peak: tuple[float, str],
              data_dir: str | None = None) -> dict:
    path, model_overrides = parse_spec(spec)
    config = load_experiment(path, **overrides)
    for key, value in model_overrides.items():
        config.model_overrides[key] = value
    if data_dir is not None:
        config.data.data_dir = data_dir
    run = build_run(config)
    iterator = run.make_iterator()
    batches = [run.to_device(next(iterator)) for _ in range(steps)]
    loss_fn = make_loss_fn(run.model_config, config, SPARSE)
    with activate(run.mesh):
        state = run.init_state()
        forward = jax.jit(lambda s, b: loss_fn(s.params, s.routing, b, 1.0, s.rng)[0])
        gradients = jax.jit(lambda s, b: jax.grad(loss_fn, has_aux=True)(s.params, s.routing, b, 1.0, s.rng)[0])
        step = run.step_fn(SPARSE)
        compile_seconds = {}
        for name, fn in (("forward", forward), ("gradients", gradients)):
            start = time.perf_counter()
            jax.block_until_ready(fn(state, batches[0]))
            compile_seconds[name] = time.perf_counter() - start
        forward_s = _median_seconds(lambda b: forward(state, b), batches)
        gradients_s = _median_seconds(lambda b: gradients(state, b), batches)
        start = time.perf_counter()
        state, _ = step(state, batches[0])
        jax.block_until_ready(state)
        compile_seconds["step"] = time.perf_counter() - start
        step_times = []
        for batch in batches:
            begin = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(state)
            step_times.append(time.perf_counter() - begin)
        step_s = statistics.median(step_times)
        grads = gradients(state, batches[0])
        optimizer_update = jax.jit(lambda p, o, g: _optimizer_update(run.optimizer, p, o, g))
        jax.block_until_ready(optimizer_update(state.params, state.opt_state, grads))
        optimizer_s = _median_seconds(
            lambda g: optimizer_update(state.params, state.opt_state, g), [grads] * steps)
    tokens = config.batch_size * config.seq_len
    flops = training_flops_per_token(run.model_config, config.seq_len)
    peak, source = peak
    counts = count_parameters(run.model_config)
    return {
        "config": Path(path).stem + "".join(f"@{k}={v}" for k, v in model_overrides.items()),
        "model": config.model, "total_params": counts["total"],
        "active_params": counts["active_per_token"], "flops_per_token": flops,
        "tokens_per_step": tokens, "step_ms": 1e3 * step_s, "tokens_per_second": tokens / step_s,
        "mfu": tokens / step_s * flops / (peak * run.mesh.size), "peak": peak, "peak_source": source,
        "forward_ms": 1e3 * forward_s, "backward_ms": 1e3 * (gradients_s - forward_s),
        "optimizer_ms": 1e3 * optimizer_s,
        "compile_s": compile_seconds,
        "final_loss": float(metrics["loss"]), "devices": run.mesh.size,
    }


ROWS = (
    ("model preset", "model", "{}"),
    ("total parameters", "total_params", "{:,}"),
    ("active parameters / token", "active_params", "{:,}"),
    ("training FLOPs / token", "flops_per_token", "{:.3g}"),
    ("tokens / step (batch x seq)", "tokens_per_step", "{}"),
    ("step time (median)", "step_ms", "{:.1f} ms"),
    ("tokens / s", "tokens_per_second", "{:,.0f}"),
    ("MFU (of measured peak)", "mfu", "{:.2%}"),
    ("forward", "forward_ms", "{:.1f} ms"),
    ("backward", "backward_ms", "{:.1f} ms"),
    ("optimizer (update + apply)", "optimizer_ms", "{:.1f} ms"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="experiments/tiny.py,experiments/dense_baseline.py",
                        help="comma-separated experiment files; PATH@field=value overrides a "
                             "model field, e.g. experiments/tiny.py@moe_impl=ragged_dot")
    parser.add_argument("--steps", type=int, default=20, help="timed calls per program")
    parser.add_argument("--seq_len", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args()
    overrides = {k: v for k, v in (("seq_len", args.seq_len), ("batch_size", args.batch_size))
                 if v is not None}
    results = []
    peak = peak_flops_per_device()  # once, so every config's MFU has the same denominator
    for path in args.configs.split(","):
        result = benchmark(path, args.steps, overrides, peak, args.data_dir)
        results.append(result)
        print(f"{path}: {result}", file=sys.stderr, flush=True)
    # Ratios of the first config to each other one (the pair: tiny / dense_baseline).
    first, others = results[0], results[1:]
    header = [r["config"] for r in results] + [f"{first['config']} / {r['config']}" for r in others]
    print("| | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    for label, key, fmt in ROWS:
        cells = [fmt.format(r[key]) for r in results]
        for other in others:
            numeric = isinstance(first[key], (int, float)) and isinstance(other[key], (int, float))
            cells.append(f"{first[key] / other[key]:.2f}x" if numeric and other[key] else "")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\nPeak: {results[0]['peak']:.3g} FLOP/s per device ({results[0]['peak_source']}); "
          f"devices: {results[0]['devices']}; backend: {jax.default_backend()}; "
          f"compile seconds: " + "; ".join(f"{r['config']} {r['compile_s']}" for r in results))


if __name__ == "__main__":
    main()
