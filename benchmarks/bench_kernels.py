"""Pallas kernels vs. their jnp references: time, achieved FLOP/s and bytes/s.

Usage:
    python benchmarks/bench_kernels.py                 # whatever backend jax picks
    python benchmarks/bench_kernels.py --out benchmarks/results/kernels.md

On TPU/GPU it times each kernel and its reference (median of --iters runs after a
compile and a warm-up), and relates achieved FLOP/s and bytes/s to ceilings measured on
the same device (a large bf16 matmul; a large copy). Shapes are GLM-5's (256 experts,
top-8, moe_intermediate 2048, hidden 6144; DSA top-k 2048, MLA latent 512 + rope 64,
128 heads; indexer 64 heads x 128) scaled to one device.

On cpu the kernels only run in Pallas interpret mode, whose timings say nothing about
performance, so the script reports interpret-mode *correctness* (scaled error vs. the
reference) at small shapes and the reference timings, and says plainly that accelerator
numbers are pending.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pallas_kernels.grouped_matmul import grouped_matmul, grouped_matmul_reference
from pallas_kernels.indexer_scores import indexer_scores, indexer_scores_reference
from pallas_kernels.sparse_attention import (
    sparse_topk_attention,
    sparse_topk_attention_reference,
)
from pallas_kernels.testing import compared_dtype, random_group_sizes, scaled_error, tolerance


@dataclasses.dataclass
class Row:
    name: str
    shape: str
    flops: float
    bytes: float
    kernel_s: float | None = None
    reference_s: float | None = None
    error: float | None = None
    tol: float | None = None
    note: str = ""


def timed(fn: Callable, *args, iters: int) -> float:
    """Median wall time of a compiled call (compile and one warm-up excluded)."""
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure_ceilings(on_accelerator: bool, iters: int) -> tuple[float, float]:
    """(matmul FLOP/s, copy bytes/s) measured on this device."""
    n = 8192 if on_accelerator else 1024
    dtype = jnp.bfloat16 if on_accelerator else jnp.float32
    a = jnp.ones((n, n), dtype)
    t = timed(lambda x: x @ x, a, iters=iters)
    flops = 2 * n**3 / t
    elems = (1 << 30 if on_accelerator else 1 << 25) // 4
    x = jnp.ones((elems,), jnp.float32)
    t = timed(lambda x: x * 2.0, x, iters=iters)
    return flops, 2 * x.nbytes / t  # read + write


def gmm_case(on_accelerator: bool, distribution: str, seed: int):
    if on_accelerator:  # one expert-parallel shard: 32 of 256 experts, up-projection
        m, k, n, experts = 16384, 6144, 2048, 32
    else:
        m, k, n, experts = 512, 256, 128, 8
    rng = np.random.default_rng(seed)
    sizes = jnp.asarray(random_group_sizes(rng, experts, m, distribution))
    lhs = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
    rhs = jnp.asarray(rng.standard_normal((experts, k, n)) / math.sqrt(k), jnp.bfloat16)
    return (lhs, rhs, sizes), f"m={m} k={k} n={n} experts={experts} {distribution}"


def bench_grouped_matmul(on_accelerator, iters, seed) -> list[Row]:
    rows = []
    for distribution in ("uniform", "skewed"):
        args, shape = gmm_case(on_accelerator, distribution, seed)
        rows += grouped_matmul_rows(*args, shape, on_accelerator, iters, seed)
    return rows


def grouped_matmul_rows(lhs, rhs, sizes, shape, on_accelerator, iters, seed) -> list[Row]:
    m, k = lhs.shape
    experts, _, n = rhs.shape
    fwd_bytes = 2 * (m * k + experts * k * n + m * n)
    kernel = lambda a, b: grouped_matmul(a, b, sizes, preferred_element_type=jnp.bfloat16)
    reference = lambda a, b: grouped_matmul_reference(
        a, b, sizes, preferred_element_type=jnp.bfloat16)
    cotangent = jnp.asarray(np.random.default_rng(seed).standard_normal((m, n)), jnp.float32)
    grad = lambda f: jax.grad(lambda a, b: jnp.sum(f(a, b).astype(jnp.float32) * cotangent),
                              (0, 1))
    return [run_row(f"grouped_matmul {label}", shape, 2 * m * k * n * mult, fwd_bytes * mult,
                    k_fn, r_fn, (lhs, rhs), on_accelerator, iters)
            for label, k_fn, r_fn, mult in (("fwd", kernel, reference, 1),
                                            ("fwd+bwd", grad(kernel), grad(reference), 3))]


def attention_case(on_accelerator: bool, context: int, seed: int):
    if on_accelerator:
        batch, heads, d_qk, d_v, topk = 1, 128, 576, 512, 2048
        q_len = min(context, 4096)  # the last q_len queries of a context-long sequence
    else:
        batch, heads, d_qk, d_v, topk, q_len = 1, 4, 72, 64, 64, 128
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((batch, q_len, heads, d_qk)), jnp.bfloat16)
    latent = jnp.asarray(rng.standard_normal((batch, context, 1, d_qk)), jnp.bfloat16)
    values = latent[..., :d_v]
    positions = context - q_len + np.arange(q_len)  # causal: choose among keys <= position
    idx = np.stack([rng.choice(p + 1, size=topk, replace=False) if p + 1 >= topk else
                    np.concatenate([rng.permutation(p + 1), -np.ones(topk - p - 1, int)])
                    for p in positions]).astype(np.int32)[None]
    shape = f"q_len={q_len} context={context} heads={heads} d_qk={d_qk} d_v={d_v} topk={topk}"
    return (q, latent, values, jnp.asarray(idx)), shape, 1.0 / math.sqrt(d_qk)


def bench_sparse_attention(on_accelerator, iters, seed, contexts) -> list[Row]:
    rows = []
    for context in contexts:
        args, shape, scale = attention_case(on_accelerator, context, seed)
        rows += sparse_attention_rows(*args, shape, scale, on_accelerator, iters, seed)
    return rows


def sparse_attention_rows(q, k, v, idx, shape, scale, on_accelerator, iters, seed) -> list[Row]:
    batch, q_len, heads, d_qk = q.shape
    d_v, topk = v.shape[-1], idx.shape[-1]
    flops = 2 * batch * q_len * heads * topk * (d_qk + d_v)
    moved = 2 * batch * q_len * (topk * (d_qk + d_v) + heads * (d_qk + d_v))
    chunk = 256 if on_accelerator else None
    kernel = lambda q, k, v: sparse_topk_attention(q, k, v, idx, scale=scale)[0]
    reference = lambda q, k, v: sparse_topk_attention_reference(
        q, k, v, idx, scale=scale, query_chunk=chunk)[0]
    cotangent = jnp.asarray(
        np.random.default_rng(seed).standard_normal((batch, q_len, heads, d_v)), jnp.float32)
    grad = lambda f: jax.grad(
        lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * cotangent), (0, 1, 2))
    return [run_row(f"sparse_topk_attention {label}", shape, flops * mult, moved * mult,
                    k_fn, r_fn, (q, k, v), on_accelerator, iters)
            for label, k_fn, r_fn, mult in (("fwd", kernel, reference, 1),
                                            ("fwd+bwd", grad(kernel), grad(reference), 3))]


def bench_dense_flash(on_accelerator, iters, seed, contexts) -> list[Row]:
    """Dense attention at the same contexts, for the sparse kernel's rows to be read
    against: ``jax.nn.dot_product_attention`` (cuDNN flash attention on GPU) in GLM-5's
    unabsorbed MHA form (64 heads, qk = v = 256), the last ``q_len`` queries against the
    whole context. Not causal: those queries see 87-100% of the keys at 32K (FLOPs count
    every key, so the rate is slightly flattering to dense)."""
    rows = []
    for context in contexts:
        if on_accelerator:
            q_len, heads, d = min(context, 4096), 64, 256
        else:
            q_len, heads, d = 128, 4, 32
        rng = np.random.default_rng(seed)
        q = jnp.asarray(rng.standard_normal((1, q_len, heads, d)), jnp.bfloat16)
        k = jnp.asarray(rng.standard_normal((1, context, heads, d)), jnp.bfloat16)
        v = jnp.asarray(rng.standard_normal((1, context, heads, d)), jnp.bfloat16)
        flops = 4 * q_len * context * heads * d
        moved = 2 * (q.size + k.size + v.size + q.size)
        impl = "cudnn" if jax.default_backend() in ("gpu", "cuda") else None
        flash = lambda q, k, v, impl=impl: jax.nn.dot_product_attention(q, k, v,
                                                                        implementation=impl)
        plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
        shape = f"q_len={q_len} context={context} heads={heads} d_qk=d_v={d} (dense)"
        if q_len * context * heads * 4 > (16 << 30):  # xla's f32 logits would not fit
            plain = None
        rows.append(run_row(f"dense attention fwd ({impl or 'xla'})", shape, flops, moved,
                            flash, plain, (q, k, v), on_accelerator, iters))
    return rows


def bench_indexer(on_accelerator, iters, seed, contexts) -> list[Row]:
    return [indexer_row(context, on_accelerator, iters, seed) for context in contexts]


def indexer_row(context, on_accelerator, iters, seed) -> Row:
    if on_accelerator:
        q_len, heads, d, chunk = min(context, 4096), 64, 128, 512
    else:
        q_len, heads, d, chunk = 128, 4, 32, None
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((1, q_len, heads, d)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((1, context, d)), jnp.bfloat16)
    w = jnp.asarray(rng.random((1, q_len, heads)), jnp.bfloat16)
    offset = context - q_len  # the last q_len queries of the context
    visible = q_len * offset + q_len * (q_len + 1) / 2
    flops = 2 * visible * heads * (d + 1)
    moved = 2 * (q.size + k.size + w.size) + 4 * q_len * context
    kernel = lambda q, k, w: indexer_scores(q, k, w, q_offset=offset)
    reference = lambda q, k, w: indexer_scores_reference(q, k, w, q_offset=offset,
                                                         query_chunk=chunk)
    shape = f"q_len={q_len} context={context} index_heads={heads} d={d}"
    return run_row("indexer_scores fwd", shape, flops, moved, kernel, reference, (q, k, w),
                   on_accelerator, iters)


def run_row(name, shape, flops, moved, kernel, reference, args, on_accelerator, iters):
    row = Row(name, shape, flops, moved)
    try:
        if reference is None:  # too large for the reference: time the kernel alone
            row.note = "no reference at this size"
            row.kernel_s = timed(kernel, *args, iters=iters)
            return row
        expected = jax.jit(reference)(*args)
        actual = jax.jit(kernel)(*args)
        # Each output judged at the tolerance of its own dtype (a float32 lse or score at
        # float32's, a bf16 output at bf16's); the row shows the worst leaf relative to it.
        judged = [(scaled_error(a, e), tolerance(compared_dtype(a, e)))
                  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected))]
        row.error, row.tol = max(judged, key=lambda pair: pair[0] / pair[1])
        row.reference_s = timed(reference, *args, iters=iters)
        if on_accelerator:
            row.kernel_s = timed(kernel, *args, iters=iters)
    except Exception as error:  # noqa: BLE001 -- a failing kernel must not hide the others
        row.note = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return row


def lowering_report() -> list[str]:
    """Lower every kernel (forward and gradient) for TPU and CUDA from this host.

    This runs the Pallas -> Mosaic / Triton lowering only; compiling those modules to
    machine code needs the device's plugin.
    """
    sds = jax.ShapeDtypeStruct
    bf16, i32 = jnp.bfloat16, jnp.int32
    cases = {
        "grouped_matmul": (
            lambda b: jax.grad(lambda x, w, g: jnp.sum(grouped_matmul(
                x, w, g, backend=b, interpret=False)), (0, 1)),
            (sds((1024, 1024), bf16), sds((8, 1024, 512), bf16), sds((8,), i32))),
        "sparse_topk_attention": (
            lambda b: jax.grad(lambda q, k, v, i: jnp.sum(sparse_topk_attention(
                q, k, v, i, scale=0.1, backend=b, interpret=False)[0].astype(jnp.float32)),
                (0, 1, 2)),
            (sds((1, 64, 16, 576), bf16), sds((1, 1024, 1, 576), bf16),
             sds((1, 1024, 1, 512), bf16), sds((1, 64, 256), i32))),
        "indexer_scores": (
            lambda b: (lambda q, k, w: indexer_scores(q, k, w, backend=b, interpret=False)),
            (sds((1, 512, 32, 128), bf16), sds((1, 2048, 128), bf16), sds((1, 512, 32), bf16))),
    }
    lines = ["| kernel (fwd + grads) | TPU (Mosaic) | GPU (Triton) |", "|---|---|---|"]
    for name, (make, shapes) in cases.items():
        cells = []
        for backend, platform in (("tpu", "tpu"), ("gpu", "cuda")):
            try:
                jax.jit(make(backend)).trace(*shapes).lower(lowering_platforms=(platform,))
                cells.append("lowers")
            except Exception as error:  # noqa: BLE001 -- report, do not abort the benchmark
                cells.append(f"FAILS: {type(error).__name__}")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return lines


def render(rows, backend, device, ceilings, command, on_accelerator) -> str:
    peak_flops, peak_bytes = ceilings
    lines = [
        "## Pallas kernels (`pallas_kernels/`)",
        "",
        f"Command: `{command}`  ",
        f"Backend: `{backend}` ({device}); jax {jax.__version__}.  ",
        (f"Measured ceilings on this device: matmul {peak_flops / 1e12:.3g} TFLOP/s, "
        f"copy {peak_bytes / 1e9:.3g} GB/s."),
        "",
    ]
    if not on_accelerator:
        lines += [
            "**GPU/TPU numbers are pending.** This run had no accelerator: the kernels ran in",
            "Pallas interpret mode, so only their correctness against the references is",
            "reported (scaled error = max |kernel - reference| / max |reference|, bf16",
            "inputs); the reference columns time the jnp paths on the cpu.",
            "",
            "| kernel | shape | scaled error | tolerance | ok | reference time | note |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            ok = "yes" if r.error is not None and r.error <= r.tol else "NO"
            lines.append(
                f"| {r.name} | {r.shape} | {fmt(r.error, '.2e')} | {fmt(r.tol, 'g')} | {ok} | "
                f"{fmt_time(r.reference_s)} | {r.note} |")
    else:
        lines += [
            ("| kernel | shape | kernel | reference | speedup | kernel TFLOP/s (% peak) "
            "| kernel GB/s (% copy) | scaled error | note |"),
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r.kernel_s:
                tflops = r.flops / r.kernel_s / 1e12
                gbs = r.bytes / r.kernel_s / 1e9
                perf = (f"{tflops:.3g} ({100 * tflops * 1e12 / peak_flops:.0f}%) | "
                        f"{gbs:.3g} ({100 * gbs * 1e9 / peak_bytes:.0f}%)")
                speedup = f"{r.reference_s / r.kernel_s:.2f}x" if r.reference_s else "-"
            else:
                perf, speedup = "- | -", "-"
            lines.append(
                f"| {r.name} | {r.shape} | {fmt_time(r.kernel_s)} | {fmt_time(r.reference_s)} "
                f"| {speedup} | {perf} | {fmt(r.error, '.2e')} | {r.note} |")
    lines += [
        "",
        "FLOPs count only useful work (visible/valid entries); bytes count the minimum",
        "traffic (operands once, gathered rows once per query). fwd+bwd counts 3x the forward.",
        "",
        "Correctness on fresh random inputs (hypothesis sweeps, poisoned outputs, forward and",
        "gradients, tolerances from the dtype; TPU formulations also under TPU interpret mode",
        "with delayed DMAs and race detection): `python -m pytest -q -n 2 tests/test_kernel_*.py`.",
        "",
        "Lowering from this host (`jit(...).trace(...).lower(lowering_platforms=...)`: the",
        "Pallas -> Mosaic/Triton lowering runs; compiling to machine code needs the device):",
        "",
        *lowering_report(),
    ]
    return "\n".join(lines) + "\n"


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def fmt_time(seconds):
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3g} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contexts", default=None,
                        help="comma-separated DSA context lengths (default: 8192,32768,65536 on "
                             "an accelerator, 1024 on cpu)")
    parser.add_argument("--out", default=None, help="also write the markdown here")
    args = parser.parse_args()

    backend = jax.default_backend()
    on_accelerator = backend in ("gpu", "tpu", "cuda", "rocm")
    contexts = ([int(c) for c in args.contexts.split(",")] if args.contexts else
                ([8192, 32768, 65536] if on_accelerator else [1024]))
    iters = args.iters if on_accelerator else min(args.iters, 3)
    ceilings = measure_ceilings(on_accelerator, iters)
    rows = bench_grouped_matmul(on_accelerator, iters, args.seed)
    rows += bench_sparse_attention(on_accelerator, iters, args.seed, contexts)
    rows += bench_dense_flash(on_accelerator, iters, args.seed, contexts)
    rows += bench_indexer(on_accelerator, iters, args.seed, contexts)
    command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    text = render(rows, backend, jax.devices()[0].device_kind, ceilings, command, on_accelerator)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
