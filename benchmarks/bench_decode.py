"""Inference benchmark: decode throughput vs transformers, cache size, DSA prefill, indexer
skipping, MTP speculation. Prints markdown tables (the numbers in BENCHMARKS.md).

    python benchmarks/bench_decode.py            # full run (~10 min on 2 CPU cores)
    python benchmarks/bench_decode.py --quick    # smoke run with small sizes

All timings are wall-clock on whatever JAX backend is active (CPU here), best of ``--repeats``
after a compile/warm-up run; ours and transformers' generate run the same tiny GLM-5 weights
(the ``tiny`` preset, exported with save_hf and loaded by transformers) on the same prompts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import glm5_jax
from glm5_jax.config import glm5_full, tiny
from glm5_jax.sample import engine
from glm5_jax.sample.cache import cache_bytes_per_token, full_kv_bytes_per_token
from glm5_jax.sample.sampling import PolicyKind, make_policy


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def timed_generation(config, variables, prompts, max_new, repeats, draft_steps=0, indexer_mode="auto",
                     min_capacity=0):
    """(prefill seconds, decode seconds, tokens emitted by decode, BatchResult-like info)."""
    prompt, lengths = engine.pad_prompts(prompts, config.vocab_size)
    capacity = engine.round_up(max(prompt.shape[1] + max_new + draft_steps + 1, min_capacity),
                               engine.CAPACITY_BUCKET)
    kind = PolicyKind.of(0.0, 0, 1.0)
    policy = make_policy(0.0, 0, 1.0, None, max_new, 0)
    prefill, loop = engine.compiled(config, kind, capacity, max_new + draft_steps + 1, draft_steps,
                                    indexer_mode, None)
    prompt, lengths = jnp.asarray(prompt), jnp.asarray(lengths)
    limit = jnp.int32(max_new)

    def run_prefill():
        return jax.block_until_ready(prefill(variables, prompt, lengths, policy))

    states = []

    def run_decode():
        state = states.pop()
        return jax.block_until_ready(loop(variables, state, policy, limit))

    final = None
    prefill_s, decode_s = float("inf"), float("inf")
    for _ in range(repeats + 1):  # first round compiles
        start = time.perf_counter()
        state = run_prefill()
        prefill_s = min(prefill_s, time.perf_counter() - start) if final is not None else prefill_s
        states.append(state)
        start = time.perf_counter()
        done = run_decode()
        elapsed = time.perf_counter() - start
        if final is not None:
            decode_s = min(decode_s, elapsed)
        final = done
    n_out = np.minimum(np.asarray(final.n_out), max_new)
    steps = np.asarray(final.steps)
    tokens = np.asarray(final.tokens)
    return {"prefill_s": prefill_s, "decode_s": decode_s, "decode_tokens": int((n_out - 1).sum()),
            "accepted": float((np.asarray(final.n_out) - 1).sum() / max(steps.sum(), 1)),
            "tokens": [tokens[i, :n_out[i]].tolist() for i in range(len(prompts))]}


def random_prompts(batch, length, vocab, seed=0):
    rng = np.random.RandomState(seed)
    return [list(rng.randint(2, vocab, size=length)) for _ in range(batch)]


def section_vs_transformers(config, variables, args):
    import torch
    from transformers import GlmMoeDsaForCausalLM

    torch.set_num_threads(args.torch_threads)
    model = glm5_jax.GLM5Model(config)
    with tempfile.TemporaryDirectory() as directory:
        glm5_jax.save_hf(model, variables, directory)
        hf = GlmMoeDsaForCausalLM.from_pretrained(directory).eval()
    hf.generation_config.eos_token_id = None
    print(f"\n### Decode throughput vs transformers generate (tiny preset, prompt {args.prompt_len} tokens, "
          f"{args.new_tokens} new tokens, greedy, CPU, torch threads {torch.get_num_threads()})\n")
    print("| batch | transformers tok/s | ours end-to-end tok/s | ours decode-only tok/s | speedup (end-to-end) | rows with identical tokens |")
    print("|---|---|---|---|---|---|")
    for batch in args.batches:
        prompts = random_prompts(batch, args.prompt_len, config.vocab_size)
        ours = timed_generation(config, variables, prompts, args.new_tokens, args.repeats)
        ours_total = batch * args.new_tokens / (ours["prefill_s"] + ours["decode_s"])
        ours_decode = ours["decode_tokens"] / ours["decode_s"]
        ids = torch.tensor(prompts)

        def hf_generate(n=args.new_tokens, ids=ids):
            with torch.no_grad():
                return hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                                   attention_mask=torch.ones_like(ids))

        hf_generate(2)
        output = hf_generate()
        hf_s = best_time(hf_generate, max(1, args.repeats - 1))
        hf_rate = batch * args.new_tokens / hf_s
        same = sum(a == b for a, b in zip(output[:, args.prompt_len:].tolist(), ours["tokens"]))
        print(f"| {batch} | {hf_rate:.0f} | {ours_total:.0f} | {ours_decode:.0f} | {ours_total / hf_rate:.1f}x | "
              f"{same}/{batch} |", flush=True)


def section_cache_bytes():
    print("\n### Cache bytes per token (all layers): MLA latent + rope key + indexer key vs expanded per-head K/V\n")
    print("| config | ours (bf16) | full per-head KV (bf16) | ratio |")
    print("|---|---|---|---|")
    for name, config in (("tiny", tiny()), ("glm5_full", glm5_full())):
        ours, full = cache_bytes_per_token(config, 2), full_kv_bytes_per_token(config, 2)
        print(f"| {name} | {ours:,} B | {full:,} B | {full / ours:.1f}x |")


def section_indexer_skip(config, variables, args):
    print(f"\n### Indexer skipping and context bucketing (decode only, batch {args.skip_batch}, cache capacity "
          f"{args.capacity}, index_topk {config.index_topk})\n")
    print("| contexts | always score every slot tok/s | auto tok/s | saving |")
    print("|---|---|---|---|")
    prompts = random_prompts(args.skip_batch, 8, config.vocab_size)
    for new, label in ((8, "8..16 (<= index_topk: indexer skipped)"), (56, "8..64 (> index_topk: bucketed)")):
        rates = {}
        for mode in ("always", "auto"):
            r = timed_generation(config, variables, prompts, new, args.repeats, indexer_mode=mode,
                                 min_capacity=args.capacity)
            rates[mode] = r["decode_tokens"] / r["decode_s"]
        print(f"| {label} | {rates['always']:.0f} | {rates['auto']:.0f} | {rates['auto'] / rates['always']:.2f}x |",
              flush=True)


def attention_heavy(config):
    """The tiny preset reshaped so attention costs ~17x the indexer per (query, key) pair, as in
    GLM-5 (64 heads x (512 + 64 + 512) vs 32 index heads x 128), with index_topk 64."""
    return config.replace(num_attention_heads=16, num_key_value_heads=16, kv_lora_rank=64, index_n_heads=4,
                          index_head_dim=32, index_topk=64)


def section_prefill(config, variables, args):
    print("\n### Prefill time, dense MLA (indexer off) vs DSA (batch 1)\n")
    print("| config | prompt tokens | dense s | DSA s | DSA speedup |")
    print("|---|---|---|---|---|")
    heavy = attention_heavy(config)
    heavy_variables = glm5_jax.init_variables(glm5_jax.GLM5Model(heavy), jax.random.PRNGKey(0))
    for label, cfg, weights in ((f"tiny (index_topk {config.index_topk})", config, variables),
                                (f"attention-heavy (index_topk {heavy.index_topk})", heavy, heavy_variables)):
        for length in args.prefill_lengths:
            prompts = random_prompts(1, length, cfg.vocab_size)
            times = {mode: timed_generation(cfg, weights, prompts, 1, args.repeats, indexer_mode=mode)["prefill_s"]
                     for mode in ("never", "auto")}
            print(f"| {label} | {length} | {times['never']:.3f} | {times['auto']:.3f} | "
                  f"{times['never'] / times['auto']:.2f}x |", flush=True)


def section_speculative(config, variables, args):
    from drafter_weights import drafter_friendly

    print(f"\n### MTP speculative decoding ({args.draft_steps} draft steps, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, greedy)\n")
    print("| weights | batch | plain tok/s | speculative tok/s | speedup | mean accepted length | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for label, weights in (("random init (untrained MTP head)", variables),
                           ("drafter-friendly (constructed, see text)", drafter_friendly(variables, config))):
        for batch in args.batches:
            prompts = random_prompts(batch, args.prompt_len, config.vocab_size)
            plain = timed_generation(config, weights, prompts, args.new_tokens, args.repeats)
            spec = timed_generation(config, weights, prompts, args.new_tokens, args.repeats,
                                    draft_steps=args.draft_steps)
            plain_rate = plain["decode_tokens"] / plain["decode_s"]
            spec_rate = spec["decode_tokens"] / spec["decode_s"]
            print(f"| {label} | {batch} | {plain_rate:.0f} | {spec_rate:.0f} | {spec_rate / plain_rate:.2f}x | "
                  f"{spec['accepted']:.2f} | {plain['tokens'] == spec['tokens']} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sections", default="hf,cache,skip,prefill,mtp")
    parser.add_argument("--torch_threads", type=int, default=1,
                        help="transformers' CPU threads (1 was its fastest on a shared 2-core host)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per number (best is kept)")
    args = parser.parse_args()
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.batches = (1, 4) if args.quick else (1, 32)
    args.prompt_len, args.new_tokens = (32, 16) if args.quick else (32, 64)
    args.skip_batch, args.capacity = (8, 512) if args.quick else (32, 4096)
    args.prefill_lengths = (256, 1024) if args.quick else (1024, 4096)
    args.draft_steps = 4
    config = tiny().replace(eos_token_id=None, initializer_range=0.1)
    variables = glm5_jax.init_variables(glm5_jax.GLM5Model(config), jax.random.PRNGKey(0))
    print(f"backend: {jax.default_backend()}, devices: {len(jax.devices())}, jax {jax.__version__}, "
          f"host load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    sections = args.sections.split(",")
    if "cache" in sections:
        section_cache_bytes()
    if "hf" in sections:
        section_vs_transformers(config, variables, args)
    if "skip" in sections:
        section_indexer_skip(config, variables, args)
    if "prefill" in sections:
        section_prefill(config, variables, args)
    if "mtp" in sections:
        section_speculative(config, variables, args)


if __name__ == "__main__":
    main()
