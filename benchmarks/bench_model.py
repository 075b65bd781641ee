"""Model benchmarks on CPU, printed as markdown tables.

(a) forward+backward tokens/s of the tiny preset: ours (jitted ``jax.value_and_grad``) vs
    transformers' ``GlmMoeDsaForCausalLM`` (eager attention, train mode, ``loss.backward()``)
    with the *same weights* (ours written with ``save_hf`` and loaded by transformers), same
    batch, same loss (mean next-token cross-entropy over batch * (seq - 1) positions).
    Multi-token prediction is not in transformers, so our step is ``model.apply(v, ids)``
    without ``return_mtp``: the MTP module is not run on either side.
(b) one DSA attention call in the absorbed MLA form: ``gathered_latent_attention`` over
    each query's top-k latents vs dense causal attention over all keys in the same latent
    form (written here), at long sequence lengths and GLM-5-like per-head dims scaled to CPU.
(c) parameter counts (total / active per token) of the presets, from abstract shapes.

    python benchmarks/bench_model.py     # all parts; ~10 min on the shared 2-core box (load 6-9)
    python benchmarks/bench_model.py --parts a --omp-passive --ours-impls masked_dense,gather

Results and their reading: benchmarks/results/model.md.

Timings on a shared machine are noisy: part (a) interleaves the contenders round by round so
load hits them alike, and reports medians and the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import jax.numpy as jnp
import numpy as np

import glm5_jax
from glm5_jax import config as presets
from glm5_jax.model.indexer import NO_KEY
from glm5_jax.model.param_count import count_parameters
from glm5_jax.model.sparse_attention import gathered_latent_attention


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def median(xs):
    return statistics.median(xs)


def fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms"


def synced(fn, *args):
    """fn(*args), waiting for JAX's asynchronous dispatch to finish."""
    return jax.block_until_ready(fn(*args))


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def timed_cpu(fn, *args):
    """(out, wall seconds, process CPU seconds over all threads)."""
    cpu, start = time.process_time(), time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start, time.process_time() - cpu


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


# (a) forward + backward: ours vs transformers -------------------------------------------------

def hf_config_for(config):
    """transformers.GlmMoeDsaConfig from config_to_hf, dropping any key it rejects."""
    import transformers

    from glm5_jax.convert.hf_config import config_to_hf

    values = config_to_hf(config)
    dropped = []
    while True:
        try:
            return transformers.GlmMoeDsaConfig(**values), dropped
        except TypeError as error:  # an unexpected keyword: name it and drop it
            bad = [k for k in values if f"'{k}'" in str(error)]
            if not bad:
                raise
            for k in bad:
                dropped.append(k)
                values.pop(k)


def our_step(model):
    def loss_fn(params, rest, ids):
        logits = model.apply({"params": params, **rest}, ids)  # no return_mtp: MTP not run
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

    return jax.jit(jax.value_and_grad(loss_fn))


def hf_step(hf_model, ids):
    import torch

    hf_model.zero_grad(set_to_none=True)
    logits = hf_model(ids).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
    loss.backward()
    return loss.detach()


def hf_grad_norm(hf_model) -> float:
    total = sum(float((p.grad.double() ** 2).sum()) for p in hf_model.parameters() if p.grad is not None)
    return math.sqrt(total)


def part_a(args) -> dict:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    config = presets.tiny()
    impls = args.ours_impls.split(",")
    # "ATTENTION[+MOE]": e.g. "masked_dense+blocked" also sets moe_impl.
    models = {impl: glm5_jax.GLM5Model(config.replace(
        attention_impl=impl.split("+")[0],
        moe_impl=impl.split("+")[1] if "+" in impl else config.moe_impl)) for impl in impls}
    variables = glm5_jax.init_variables(models[impls[0]], jax.random.PRNGKey(0))
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    hf_conf, dropped = hf_config_for(config)
    hf_conf._attn_implementation = "eager"
    with tempfile.TemporaryDirectory() as directory:
        glm5_jax.save_hf(models[impls[0]], variables, directory)  # same weights on both sides
        kwargs = {"config": hf_conf, "attn_implementation": "eager"}
        if args.hf_experts:
            kwargs["experts_implementation"] = args.hf_experts
        hf_model = transformers.GlmMoeDsaForCausalLM.from_pretrained(directory, **kwargs)
    hf_model.train()
    hf_params = sum(p.numel() for p in hf_model.parameters())
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, jax {jax.__version__}; "
          f"HF attention={hf_model.config._attn_implementation}, "
          f"experts={hf_model.config._experts_implementation}; config keys dropped: {dropped or 'none'}")
    print(f"JAX devices: {jax.devices()} (XLA CPU uses its own intra-op pool over all "
          f"{os.cpu_count()} cores); torch threads compared: {args.torch_threads}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (libgomp default: spin, then sleep)')}")

    rows, rows_check = [], []
    results = {"hf_params": hf_params}
    for seq in ints(args.seqs):
        ids_np = np.random.RandomState(seq).randint(0, config.vocab_size, size=(args.batch, seq))
        ids_j = jnp.asarray(ids_np, jnp.int32)
        ids_t = torch.as_tensor(ids_np, dtype=torch.long)
        tokens = args.batch * seq
        steps, compile_s, check = {}, {}, {}
        for impl in impls:
            steps[impl] = our_step(models[impl])
            (loss, grads), compile_s[impl] = timed(synced, steps[impl], params, rest, ids_j)
            gnorm = math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in
                                  jax.tree_util.tree_leaves(grads)))
            check[impl] = (float(loss), gnorm)
        for threads in args.torch_threads:  # warm-up, and the parity check
            torch.set_num_threads(threads)
            hf_loss = hf_step(hf_model, ids_t).item()
        hf_gnorm = hf_grad_norm(hf_model)
        for impl in impls:
            rows_check.append([seq, impl, f"{check[impl][0]:.6f}", f"{hf_loss:.6f}",
                               f"{abs(check[impl][0] - hf_loss):.1e}",
                               f"{check[impl][1]:.6f}", f"{hf_gnorm:.6f}",
                               f"{abs(check[impl][1] - hf_gnorm) / hf_gnorm:.1e}"])

        times = {f"ours/{impl}": [] for impl in impls}
        times.update({f"hf/t{t}": [] for t in args.torch_threads})
        cpu = {name: [] for name in times}
        for _ in range(args.repeats):  # interleaved rounds
            for impl in impls:
                _, dt, dc = timed_cpu(synced, steps[impl], params, rest, ids_j)
                times[f"ours/{impl}"].append(dt)
                cpu[f"ours/{impl}"].append(dc)
            for threads in args.torch_threads:
                torch.set_num_threads(threads)
                _, dt, dc = timed_cpu(hf_step, hf_model, ids_t)
                times[f"hf/t{threads}"].append(dt)
                cpu[f"hf/t{threads}"].append(dc)
        torch.set_num_threads(max(args.torch_threads))
        for impl in impls:
            ours = times[f"ours/{impl}"]
            for threads in args.torch_threads:
                theirs = times[f"hf/t{threads}"]
                per_round = [b / a for a, b in zip(ours, theirs)]
                rows.append([
                    f"{args.batch}x{seq}", f"{impl}" + (" (preset default)" if impl == config.attention_impl else ""),
                    fmt_s(compile_s[impl]), fmt_s(median(ours)), f"{tokens / median(ours):,.0f}",
                    threads, fmt_s(median(theirs)), f"{tokens / median(theirs):,.0f}",
                    f"**{median(theirs) / median(ours):.1f}x**", f"{median(per_round):.1f}x",
                    f"{min(per_round):.1f}-{max(per_round):.1f}x",
                    f"{fmt_s(median(cpu[f'ours/{impl}']))} / {fmt_s(median(cpu[f'hf/t{threads}']))}",
                    f"{median(cpu[f'hf/t{threads}']) / median(cpu[f'ours/{impl}']):.1f}x"])
        results[seq] = times
    print(f"\n### (a) forward+backward, tiny preset, batch {args.batch}, {args.repeats} interleaved rounds "
          f"(index_topk={config.index_topk}: DSA is active when seq > {config.index_topk})\n")
    print(table(["batch x seq", "ours: attention_impl", "ours: compile", "ours: step (median)",
                 "ours: tokens/s", "torch threads", "HF: step (median)", "HF: tokens/s",
                 "speedup ours vs HF (ratio of medians)", "median per-round ratio", "per-round range",
                 "CPU time/step ours / HF", "CPU-time ratio"], rows))
    print("\nSame computation check (first step: loss, and global L2 norm of all parameter gradients; "
          "MTP/indexer parameters get zero/no gradient on both sides):\n")
    print(table(["seq", "ours: impl", "ours loss", "HF loss", "abs diff", "ours grad norm",
                 "HF grad norm", "rel diff"], rows_check))
    return results


# (b) one sparse (gather) attention call vs dense causal attention, absorbed latent form --------

def dense_absorbed_attention(q_latent, q_rope, latent, k_rope, scale, chunk, q_offset=0):
    """Full causal attention over every key t <= s in the absorbed MLA form.

    scores[s, h, t] = q_latent[s, h] . latent[t] + q_rope[s, h] . k_rope[t]; softmax over t <= s;
    out[s, h] = sum_t p[s, h, t] latent[t].  Queries (absolute positions q_offset + i) are
    processed in blocks of ``chunk``; a block only reads keys up to its last query (blocks above
    the diagonal are skipped, as a flash-style kernel would), so the work is about
    S (S + chunk) / 2 query-key pairs rather than S^2.
    """
    n_q = q_latent.shape[1]
    outs = []
    for start in range(0, n_q, chunk):
        end = min(start + chunk, n_q)
        kv_end = q_offset + end
        lat, kr = latent[:, :kv_end], k_rope[:, :kv_end]
        logits = (jnp.einsum("bshc,btc->bsht", q_latent[:, start:end], lat)
                  + jnp.einsum("bshr,btr->bsht", q_rope[:, start:end], kr)).astype(jnp.float32) * scale
        causal = (q_offset + start + jnp.arange(end - start))[:, None] >= jnp.arange(kv_end)[None, :]
        logits = jnp.where(causal[None, :, None, :], logits, -jnp.inf)
        probs = jax.nn.softmax(logits, axis=-1).astype(latent.dtype)
        outs.append(jnp.einsum("bsht,btc->bshc", probs, lat))
    return jnp.concatenate(outs, axis=1)


def sparse_chunked(q_latent, q_rope, latent, k_rope, topk, scale, chunk):
    """``gathered_latent_attention``, mapped over query blocks of ``chunk`` when chunk < S (the
    function materialises the gathered [b, s, k, c + r] latents, too large for one call)."""
    b, n_q, h, c = q_latent.shape
    if chunk >= n_q:
        return gathered_latent_attention(q_latent, q_rope, latent, k_rope, topk, scale)
    n = n_q // chunk

    def blocks(x):
        return jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)

    out = jax.lax.map(lambda a: gathered_latent_attention(a[0], a[1], latent, k_rope, a[2], scale),
                      (blocks(q_latent), blocks(q_rope), blocks(topk)))
    return jnp.moveaxis(out, 0, 1).reshape(b, n_q, h, c)


def causal_topk(key, seq: int, k: int, first: int = 0) -> jax.Array:
    """[1, seq - first, k] int32 for queries first..seq-1: distinct causal positions per query in
    random order (top_k returns them by score, not by position); NO_KEY where fewer than k keys
    exist (query s < k - 1)."""
    k1, k2 = jax.random.split(key)
    s = jnp.arange(first, seq)[:, None]
    j = jnp.arange(k)[None, :]
    n = seq - first
    # Query s >= k: one position from each of k equal bins of [0, s] (distinct, spread out).
    spread = jnp.floor((j + jax.random.uniform(k1, (n, k))) * (s + 1) / k).astype(jnp.int32)
    idx = jnp.where(s + 1 > k, jnp.minimum(spread, s), jnp.where(j <= s, j, NO_KEY))
    order = jnp.argsort(jax.random.uniform(k2, (n, k)), axis=-1)
    return jnp.take_along_axis(idx, order, axis=-1)[None].astype(jnp.int32)


def attention_inputs(seq, heads, c, r, key):
    ks = jax.random.split(key, 4)
    return (jax.random.normal(ks[0], (1, seq, heads, c), jnp.float32),
            jax.random.normal(ks[1], (1, seq, heads, r), jnp.float32),
            jax.random.normal(ks[2], (1, seq, c), jnp.float32),
            jax.random.normal(ks[3], (1, seq, r), jnp.float32))


def time_repeated(max_repeats: int, budget_s: float, fn, *args):
    """Compile + warm up fn(*args), then time up to ``max_repeats`` calls (fewer once ``budget_s``
    is spent). Returns (median wall s, number timed, median process CPU s)."""
    synced(fn, *args)
    walls, cpus = [], []
    while len(walls) < max_repeats and (not walls or sum(walls) < budget_s):
        _, wall, cpu = timed_cpu(synced, fn, *args)
        walls.append(wall)
        cpus.append(cpu)
    return median(walls), len(walls), median(cpus)


def run_dense(args, scale, inputs, whole, repeats=None):
    """(wall s, timed calls, CPU s) of one dense call, measured whole or scaled from the last block."""
    q_l, q_r, lat, kr = inputs
    seq, qb = q_l.shape[1], args.sample_queries
    repeats = repeats or args.attn_repeats
    if whole:
        fn = jax.jit(functools.partial(dense_absorbed_attention, scale=scale, chunk=min(args.dense_chunk, seq)))
        return time_repeated(repeats, args.repeat_budget_s, fn, q_l, q_r, lat, kr)
    fn = jax.jit(functools.partial(dense_absorbed_attention, scale=scale, chunk=qb, q_offset=seq - qb))
    t, n, cpu = time_repeated(repeats, args.repeat_budget_s, fn,
                              q_l[:, -qb:], q_r[:, -qb:], lat, kr)
    factor = (seq // qb + 1) / 2  # blocks i = 0..n-1 read (i+1) * qb keys; the last reads n * qb
    return t * factor, n, cpu * factor


def run_sparse(args, scale, inputs, k, whole, repeats=None):
    """(wall s, timed calls, CPU s, query block) of one gather-path call, whole or scaled."""
    q_l, q_r, lat, kr = inputs
    seq, qb = q_l.shape[1], args.sample_queries
    first = 0 if whole else seq - qb
    topk = jax.jit(causal_topk, static_argnums=(1, 2, 3))(jax.random.PRNGKey(seq + k), seq, k, first)
    repeats = repeats or args.attn_repeats
    c, r = lat.shape[-1], kr.shape[-1]
    # Query block for the gather path: its gathered latents stay under the budget.
    budget_rows = max(1, (args.gather_budget_mb << 20) // (k * (c + r) * 4))
    chunk = min(seq if whole else qb, 1 << int(math.log2(budget_rows)))
    fn = jax.jit(functools.partial(sparse_chunked, scale=scale, chunk=chunk))
    if whole:
        return time_repeated(repeats, args.repeat_budget_s, fn, q_l, q_r, lat, kr, topk) + (chunk,)
    t, n, cpu = time_repeated(repeats, args.repeat_budget_s, fn, q_l[:, -qb:], q_r[:, -qb:], lat, kr, topk)
    return t * seq / qb, n, cpu * seq / qb, chunk


def part_b(args) -> None:
    h, c, r = args.heads, args.kv_lora, args.rope
    scale = args.qk_head_dim ** -0.5
    per_pair = 2 * (c + r) + 2 * c  # FLOPs per (query, head, key slot): scores + mixing
    topks = ints(args.topks)
    qb = args.sample_queries

    print(f"\n### (b) one attention call, absorbed MLA latent form, batch 1, heads {h}, kv_lora (c) {c}, "
          f"rope (r) {r}, float32\n")
    # The dense reference equals the gather path when top-k selects every causal key.
    seq_check = 512
    q_l, q_r, lat, kr = attention_inputs(seq_check, h, c, r, jax.random.PRNGKey(1))
    all_keys = causal_topk(jax.random.PRNGKey(2), seq_check, seq_check)
    sparse_out = jax.jit(lambda *a: gathered_latent_attention(*a, scale))(q_l, q_r, lat, kr, all_keys)
    dense_out = jax.jit(lambda *a: dense_absorbed_attention(*a, scale, 128))(q_l, q_r, lat, kr)
    err = float(jnp.max(jnp.abs(sparse_out - dense_out)) / jnp.max(jnp.abs(dense_out)))
    print(f"- Check: gather path with top-k = every causal key (k = S = {seq_check}) vs the dense "
          f"reference: max relative difference {err:.1e}.")
    print(f"- Dense: query blocks of {args.dense_chunk}, key blocks above the diagonal skipped. Sparse: "
          f"`gathered_latent_attention` mapped (lax.map) over query blocks so that its gathered "
          f"[block, k, c + r] float32 latents stay under {args.gather_budget_mb} MiB (it materialises "
          f"S * k * (c + r) floats: {max(topks) * (c + r) * 4 / 2**20:.2f} MiB per query at k={max(topks)}).")
    print(f"- S <= {args.full_max_seq}: whole calls are timed. Larger S (marked *): only the last {qb} "
          f"queries are timed against the full S-long latent cache and the time is scaled to all S "
          f"queries: x S/{qb} for the gather path (every query computes exactly k slots, valid or "
          f"NO_KEY, so its cost is linear in queries) and x (n+1)/2 for dense (n = S/{qb} causal "
          f"blocks, block i reads (i+1)*{qb} keys; the timed block is the last, longest one). "
          f"The first S shown above {args.full_max_seq} is also timed whole to check the scaling.")
    print(f"- Up to {args.attn_repeats} timed calls each (fewer once {args.repeat_budget_s:.0f} s is spent); "
          f"compilation excluded. top-k: distinct random causal positions in random order.\n")

    rows, check_rows, skipped = [], [], []
    checked = False
    for seq in ints(args.attn_seqs):
        sampled = seq > args.full_max_seq
        dense_flops = seq * seq / 2 * h * per_pair

        inputs = attention_inputs(seq, h, c, r, jax.random.PRNGKey(seq))
        dense_t, dense_n, dense_cpu = run_dense(args, scale, inputs, not sampled)
        mark = "*" if sampled else ""
        rows.append([f"{seq}{mark}", "dense causal", "-", "-", f"{dense_flops / 1e9:,.1f}",
                     fmt_s(dense_t), fmt_s(dense_cpu), dense_n, f"{dense_flops / dense_t / 1e9:.2f}",
                     "-", "-", "-", "-"])
        if sampled and not checked:
            whole_t = run_dense(args, scale, inputs, True, repeats=1)[0]
            check_rows.append([seq, "dense causal", "-", fmt_s(whole_t), fmt_s(dense_t), f"{dense_t / whole_t:.2f}"])
        for k in topks:
            if k >= seq:
                skipped.append(f"S={seq}, k={k}")
                continue
            sparse_t, sparse_n, sparse_cpu, chunk = run_sparse(args, scale, inputs, k, not sampled)
            sparse_flops = seq * k * h * per_pair  # every slot is computed, NO_KEY ones included
            rows.append([f"{seq}{mark}", "sparse gather", k, chunk, f"{sparse_flops / 1e9:,.1f}",
                         fmt_s(sparse_t), fmt_s(sparse_cpu), sparse_n, f"{sparse_flops / sparse_t / 1e9:.2f}",
                         f"{dense_flops / sparse_flops:.2f}", f"**{dense_t / sparse_t:.2f}x**",
                         f"{dense_cpu / sparse_cpu:.2f}x",
                         f"{(dense_t / sparse_t) / (dense_flops / sparse_flops):.0%}"])
            if sampled and not checked and k == topks[0]:
                whole_t = run_sparse(args, scale, inputs, k, True, repeats=1)[0]
                check_rows.append([seq, "sparse gather", k, fmt_s(whole_t), fmt_s(sparse_t),
                                   f"{sparse_t / whole_t:.2f}"])
        checked = checked or sampled
        print(f"  S={seq} done", flush=True)
    print()
    print(table(["S", "path", "k", "query block", "GFLOP", "wall time (median)", "CPU time",
                 "timed calls", "GFLOP/s (wall)", "FLOP ratio dense/sparse = S/(2k)",
                 "measured speedup dense/sparse (wall)", "same, CPU time", "measured / FLOP ratio"], rows))
    if skipped:
        print(f"\nSkipped (k >= S: top-k keeps every causal key, nothing to gain): {'; '.join(skipped)}.")
    if check_rows:
        print("\nScaling check at the first S above --full-max-seq (whole call timed once vs the last-block estimate):\n")
        print(table(["S", "path", "k", "whole call", "estimate from last block", "estimate / whole"],
                    check_rows))


# (c) parameter counts ----------------------------------------------------------------------------

def part_c(args, hf_params=None) -> None:
    rows = []
    for name in ("glm5_full", "tiny", "dense_baseline"):
        counts, dt = timed(count_parameters, presets.get_preset(name))

        def n(x):
            return f"{x / 1e9:,.2f} B" if x >= 1e9 else f"{x:,}"

        rows.append([name, n(counts["total"]), n(counts["total_without_mtp"]), n(counts["mtp"]),
                     n(counts["routed_experts"]), n(counts["embedding_and_head"]),
                     n(counts["active_per_token"]), n(counts["active_per_token_without_embedding"]),
                     f"{counts['active_per_token'] / counts['total_without_mtp']:.1%}", fmt_s(dt)])
        if name == "tiny":
            tiny_main = counts["total_without_mtp"]
    print("\n### (c) parameter counts (jax.eval_shape, nothing allocated)\n")
    print(table(["preset", "total", "total w/o MTP", "MTP", "routed experts", "embedding+head",
                 "active/token", "active/token w/o embedding", "active / total w/o MTP",
                 "count time"], rows))
    if hf_params is not None:
        print(f"\nCross-check: transformers' GlmMoeDsaForCausalLM at the tiny config has {hf_params:,} "
              f"parameters (no MTP layer; routing biases are buffers) vs our total w/o MTP {tiny_main:,}.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="a,b,c", help="comma-separated subset of a,b,c")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seqs", default="128,256", help="(a) sequence lengths")
    p.add_argument("--repeats", type=int, default=4, help="(a) interleaved timing rounds")
    p.add_argument("--torch-threads", type=ints, default=[1, 2], help="(a) torch thread counts")
    p.add_argument("--ours-impls", default="masked_dense",
                   help="(a) our attention_impl values, e.g. masked_dense,gather (each compiles ~1 min); "
                   "ATTENTION+MOE also sets moe_impl, e.g. masked_dense+blocked")
    p.add_argument("--omp-passive", action="store_true",
                   help="(a) set OMP_WAIT_POLICY=PASSIVE before torch loads (idle OpenMP threads sleep "
                   "instead of spinning; matters for torch threads > 1 on a busy machine)")
    p.add_argument("--hf-experts", default="", help="(a) transformers experts_implementation "
                   "(default: what transformers picks)")
    p.add_argument("--attn-seqs", default="2048,4096,8192,16384", help="(b) sequence lengths")
    p.add_argument("--topks", default="512,1024,2048", help="(b) index_topk values")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-lora", type=int, default=128)
    p.add_argument("--rope", type=int, default=64)
    p.add_argument("--qk-head-dim", type=int, default=256, help="(b) softmax scale = this^-0.5 (GLM-5: 192+64)")
    p.add_argument("--dense-chunk", type=int, default=1024, help="(b) dense query block")
    p.add_argument("--gather-budget-mb", type=int, default=256, help="(b) max gathered latents per block")
    p.add_argument("--attn-repeats", type=int, default=3, help="(b) max timed calls per row")
    p.add_argument("--repeat-budget-s", type=float, default=5.0,
                   help="(b) stop repeating a row once its timed calls add up to this")
    p.add_argument("--full-max-seq", type=int, default=2048,
                   help="(b) time whole calls up to this S; above it, time the last query block and scale")
    p.add_argument("--sample-queries", type=int, default=1024, help="(b) query block timed above --full-max-seq")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    if args.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # torch is imported later, in part_a

    print(f"# bench_model: {' '.join(sys.argv[1:]) or '(defaults)'}")
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cpus, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    hf_params = None
    if "a" in parts:
        hf_params = part_a(args)["hf_params"]
        print(f"\n(part a took {time.perf_counter() - start:.0f} s)", flush=True)
    if "b" in parts:
        t = time.perf_counter()
        part_b(args)
        print(f"\n(part b took {time.perf_counter() - t:.0f} s)", flush=True)
    if "c" in parts:
        part_c(args, hf_params)
    print(f"\nTotal {time.perf_counter() - start:.0f} s; load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
