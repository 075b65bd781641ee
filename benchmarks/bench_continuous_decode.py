"""Continuous batching vs batch-synchronous generation vs transformers' ``generate``, one run.

    python benchmarks/bench_continuous_decode.py --write benchmarks/results/decode_continuous.md
    python benchmarks/bench_continuous_decode.py --quick          # small smoke run

32 requests arrive together, each with its own prompt length and its own ``max_new_tokens``
(seeded draws), and at most ``--slots`` of them decode at once. Every method serves the same
requests with the same tiny GLM-5 weights (greedy, EOS off, so each request emits exactly its
own ``max_new_tokens``):

* **continuous**: ``glm5_jax.sample.continuous.ContinuousBatcher``; a request takes a free slot
  as soon as one opens and leaves when it is done;
* **batch-synchronous**: today's ``generate`` path (``engine.compiled``'s prefill and decode
  loop, what ``run_batch`` runs) on the requests in arrival order, ``--slots`` per padded batch,
  each batch decoding to its longest ``max_new_tokens`` (tokens past a request's own limit are
  discarded); a block after prefill stamps the first tokens;
* **transformers, padded batches**: ``GlmMoeDsaForCausalLM.generate`` on the same batches
  (left padding, attention mask), first tokens stamped by a streamer;
* **transformers, one at a time**: ``generate`` per request, in arrival order.

Reported per method: useful tokens/s (each request's own tokens over the wall time until the
last request is done, prefill included), time to first token and request latency from the
moment all requests were submitted (p50/p90/p99 over the 32 requests). Each number is the
median over ``--repeats`` timed runs after one warm-up run that compiles everything; each timed
round runs every method back to back, and the paired column is the median over rounds of the
ratio to transformers' padded batches in the same round. The host load average is printed
before and after.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import glm5_jax
from glm5_jax.config import MOE_IMPLS, tiny
from glm5_jax.sample import engine
from glm5_jax.sample.continuous import ContinuousBatcher, Request
from glm5_jax.sample.sampling import PolicyKind, make_policy, request_keys

PERCENTILES = (50, 90, 99)


def make_requests(count: int, prompt_range, new_range, vocab: int, seed: int = 0) -> list[Request]:
    rng = np.random.RandomState(seed)
    return [Request(list(rng.randint(2, vocab, size=rng.randint(prompt_range[0], prompt_range[1] + 1))),
                    int(rng.randint(new_range[0], new_range[1] + 1)), seed=seed, index=i, tag=i)
            for i in range(count)]


def summary(tokens: list[list[int]], first_s, done_s, start: float) -> dict:
    first = np.asarray(first_s) - start
    done = np.asarray(done_s) - start
    return {"tokens": tokens, "tokens_per_s": sum(map(len, tokens)) / done.max(),
            "ttft": {p: float(np.percentile(first, p)) for p in PERCENTILES},
            "latency": {p: float(np.percentile(done, p)) for p in PERCENTILES}}


# Ours -----------------------------------------------------------------------------------------
def run_continuous(config, variables, requests, slots, capacity, steps_per_call, temperature=0.0, min_rows=4):
    batcher = ContinuousBatcher(config, slots, capacity, temperature, eos_token_id=None,
                                steps_per_call=steps_per_call, min_rows=min_rows)
    batcher.set_weights(variables, 0)
    start = time.perf_counter()
    completions = batcher.run(requests)
    return summary([c.token_ids for c in completions], [c.first_token_s for c in completions],
                   [c.finished_s for c in completions], start)


def run_batch_synchronous(config, variables, requests, slots, temperature=0.0):
    """run_batch's programs and arithmetic, with a block after prefill to stamp first tokens."""
    kind = PolicyKind.of(temperature, 0, 1.0)
    tokens, first_s, done_s = [], [], []
    start = time.perf_counter()
    for begin in range(0, len(requests), slots):
        batch = requests[begin:begin + slots]
        max_new = max(r.max_new_tokens for r in batch)
        prompt, lengths = engine.pad_prompts([r.prompt for r in batch], config.vocab_size)
        capacity = engine.round_up(prompt.shape[1] + max_new + 1, engine.CAPACITY_BUCKET)
        prefill, loop = engine.compiled(config, kind, capacity, max_new + 1, 0, "auto", None)
        policy = make_policy(temperature, 0, 1.0, None, max_new, batch[0].seed)
        keys = request_keys(policy.key, len(batch), batch[0].index)
        state = jax.block_until_ready(prefill(variables, jnp.asarray(prompt), jnp.asarray(lengths), policy, keys))
        first = time.perf_counter()
        state = loop(variables, state, policy, jnp.int32(max_new))
        out = np.asarray(state.tokens)
        done = time.perf_counter()
        for row, request in enumerate(batch):
            tokens.append(out[row, :request.max_new_tokens].tolist())
            first_s.append(first)
            done_s.append(done)
    return summary(tokens, first_s, done_s, start)


# transformers ---------------------------------------------------------------------------------
def load_transformers(config, variables):
    import torch
    import transformers
    from transformers import GlmMoeDsaForCausalLM

    transformers.logging.set_verbosity_error()  # its load report lists the MTP layer it ignores
    with tempfile.TemporaryDirectory() as directory:
        glm5_jax.save_hf(glm5_jax.GLM5Model(config), variables, directory)
        model = GlmMoeDsaForCausalLM.from_pretrained(directory).eval()
    model.generation_config.eos_token_id = None
    return model


class FirstTokenClock:
    """A generate() streamer that stamps the time of the first generated token."""

    def __init__(self) -> None:
        self.calls, self.first_s = 0, float("nan")

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:  # the first put is the prompt
            self.first_s = time.perf_counter()

    def end(self) -> None:
        pass


def hf_generate(model, prompts: list[list[int]], max_new: int):
    """Greedy, exactly max_new tokens per row; left-padded batch. Returns (new tokens, first-token time)."""
    import torch

    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    clock = FirstTokenClock()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=max_new,
                             do_sample=False, pad_token_id=0, streamer=clock)
    return out[:, width:].tolist(), clock.first_s


def run_transformers(model, requests, batch_rows):
    tokens, first_s, done_s = [], [], []
    start = time.perf_counter()
    for begin in range(0, len(requests), batch_rows):
        batch = requests[begin:begin + batch_rows]
        out, first = hf_generate(model, [r.prompt for r in batch], max(r.max_new_tokens for r in batch))
        done = time.perf_counter()
        for row, request in enumerate(batch):
            tokens.append(out[row][:request.max_new_tokens])
            first_s.append(first)
            done_s.append(done)
    return summary(tokens, first_s, done_s, start)


# Reporting ------------------------------------------------------------------------------------
def median_of(runs: list[dict]) -> dict:
    return {"tokens": runs[0]["tokens"], "tokens_per_s": float(np.median([r["tokens_per_s"] for r in runs])),
            "runs_tokens_per_s": [r["tokens_per_s"] for r in runs],
            **{key: {p: float(np.median([r[key][p] for r in runs])) for p in PERCENTILES}
               for key in ("ttft", "latency")}}


def same_rows(a: dict, b: dict) -> int:
    return sum(x == y for x, y in zip(a["tokens"], b["tokens"]))


def paired_ratio(results: dict[str, dict], name: str, other: str) -> float:
    """Median over rounds of the ratio of two methods' tokens/s measured in the same round."""
    return float(np.median(np.asarray(results[name]["runs_tokens_per_s"])
                           / np.asarray(results[other]["runs_tokens_per_s"])))


def table(results: dict[str, dict], reference: str, padded: str, best_transformers: float) -> list[str]:
    lines = ["| method | tokens/s (median) | vs best transformers | vs transformers padded, same repeat (median) "
             "| TTFT p50 / p90 / p99 s | latency p50 / p90 / p99 s | requests with the same tokens as "
             + reference + " |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ttft = " / ".join(f"{r['ttft'][p]:.3f}" for p in PERCENTILES)
        latency = " / ".join(f"{r['latency'][p]:.3f}" for p in PERCENTILES)
        paired = paired_ratio(results, name, padded)
        lines.append(f"| {name} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / best_transformers:.1f}x "
                     f"| {paired:.1f}x | {ttft} | {latency} | {same_rows(r, results[reference])}/{len(r['tokens'])} |")
    return lines


def measure(config, variables, requests, capacity, slots, hf, steps_per_call, repeats, one_at_a_time,
            torch_threads, min_rows):
    """Every method once to compile / warm up, then ``repeats`` rounds, each running every method
    back to back (so a load spike on the shared host hits all of them alike)."""
    methods = {
        "continuous (ours)": lambda: run_continuous(config, variables, requests, slots, capacity, steps_per_call,
                                                    min_rows=min_rows),
        "batch-synchronous generate (ours)": lambda: run_batch_synchronous(config, variables, requests, slots),
    }
    for threads in torch_threads:
        methods[padded_name(slots, threads)] = threaded(threads, lambda: run_transformers(hf, requests, slots))
    if one_at_a_time:
        methods["transformers generate, one request at a time"] = threaded(
            torch_threads[0], lambda: run_transformers(hf, requests, 1))
    for fn in methods.values():
        fn()
    runs: dict[str, list[dict]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            runs[name].append(fn())
    return {name: median_of(r) for name, r in runs.items()}


def padded_name(slots: int, threads: int) -> str:
    return f"transformers generate, padded batches of {slots}, {threads} torch thread(s)"


def best_padded(results: dict[str, dict], slots: int, torch_threads: list[int]) -> str:
    """transformers' fastest thread setting at this concurrency: the paired column's reference."""
    return max((padded_name(slots, t) for t in torch_threads), key=lambda name: results[name]["tokens_per_s"])


def threaded(threads: int, fn):
    """fn with torch's intra-op thread count set to ``threads`` for its run."""
    import torch

    def run():
            return fn()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 requests, short lengths, 1 repeat")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--slots", default="8,32", help="concurrent rows (comma-separated settings)")
    parser.add_argument("--steps_per_call", type=int, default=8, help="continuous: decode steps per device call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch_threads", default="1,2",
                        help="transformers' intra-op threads, each setting timed (comma-separated)")
    parser.add_argument("--min_rows", type=int, default=4,
                        help="continuous: the smallest decode batch it shrinks to (--min_rows=SLOTS: never)")
    parser.add_argument("--moe_impl", default="dense", choices=MOE_IMPLS,
                        help="ours: the routed experts' implementation (the same weights and function)")
    parser.add_argument("--write", default="", help="also write the markdown fragment here")
    args = parser.parse_args()
    prompt_range, new_range = ((4, 24), (4, 24)) if args.quick else ((8, 64), (8, 96))
    requests_count = 8 if args.quick else args.requests
    repeats = 1 if args.quick else args.repeats
    config = tiny().replace(eos_token_id=None, initializer_range=0.1, moe_impl=args.moe_impl)
    torch_threads = [int(t) for t in args.torch_threads.split(",")]
    variables = glm5_jax.init_variables(glm5_jax.GLM5Model(config), jax.random.PRNGKey(0))
    requests = make_requests(requests_count, prompt_range, new_range, config.vocab_size)
    capacity = max(len(r.prompt) + r.max_new_tokens for r in requests)
    load_before = os.getloadavg()
    header = (f"backend {jax.default_backend()}, jax {jax.__version__}, {os.cpu_count()} cores, load average "
              f"{load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} (1 / 5 / 15 min) at the start")
    print(header, flush=True)
    hf = load_transformers(config, variables)
    settings = [int(s) for s in args.slots.split(",")]
    by_slots: dict[int, dict[str, dict]] = {}
    sampled_same: dict[int, int] = {}
    for slots in settings:
        results = measure(config, variables, requests, capacity, slots, hf, args.steps_per_call, repeats,
                          one_at_a_time=slots == settings[0], torch_threads=torch_threads, min_rows=args.min_rows)
        by_slots[slots] = results
        sampled_same[slots] = same_rows(
            run_continuous(config, variables, requests, slots, capacity, args.steps_per_call, 1.0, args.min_rows),
            run_batch_synchronous(config, variables, requests, slots, 1.0))
        print(f"slots {slots} done", flush=True)
    hf_rates = {(slots, name): r["tokens_per_s"] for slots, results in by_slots.items()
                for name, r in results.items() if name.startswith("transformers")}
    (best_slots, best_name), best_rate = max(hf_rates.items(), key=lambda item: item[1])
    lines = [(f"\nBest transformers setting: {best_name} ({best_rate:.0f} tokens/s, at most {best_slots} at once); "
              "the ratios below are against it.")]
    for slots, results in by_slots.items():
        lines += [f"\n### {len(requests)} requests, at most {slots} at once\n",
                  *table(results, "continuous (ours)", best_padded(results, slots, torch_threads), best_rate),
                  (f"\nContinuous / batch-synchronous tokens/s, same round: median "
                   f"{paired_ratio(results, 'continuous (ours)', 'batch-synchronous generate (ours)'):.2f}x."),
                  (f"\nSampled (temperature 1, per-request seeds): continuous and batch-synchronous drew the "
                   f"same tokens in {sampled_same[slots]}/{len(requests)} requests. Tokens/s of each timed run: "
                   + "; ".join(f"{name}: {', '.join(f'{x:.0f}' for x in r['runs_tokens_per_s'])}"
                               for name, r in results.items()) + ".")]
    load_after = os.getloadavg()
    footer = f"\nLoad average at the end: {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f}."
    print("\n".join(lines) + footer)
    if args.write:
        write_fragment(args.write, header, lines, footer, requests, prompt_range, new_range, repeats, args)


def write_fragment(path, header, lines, footer, requests, prompt_range, new_range, repeats, args) -> None:
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    text = [
        "# Continuous batching: requests join and leave a running decode batch (CPU, tiny preset)",
        "",
        "Command:",
        "",
        f"    {command}",
        "",
        (f"Machine: {header}. Model: the `tiny` preset (random weights, `initializer_range=0.1`, float32; ours "
         f"with `moe_impl={args.moe_impl}`), "
         f"the same weights in transformers (`save_hf` -> `GlmMoeDsaForCausalLM`, timed at {args.torch_threads} torch "
         f"thread(s)). {len(requests)} requests submitted together: prompt lengths {prompt_range[0]}-{prompt_range[1]} "
         f"tokens, `max_new_tokens` {new_range[0]}-{new_range[1]} (seeded draws; "
         f"{sum(r.max_new_tokens for r in requests)} tokens in all), greedy, EOS off. Continuous batching runs "
         f"{args.steps_per_call} decode steps per device call and shrinks its decode batch down to "
         f"{args.min_rows} rows as requests finish. Tokens/s counts each request's own tokens over the "
         "time until the last request is done (prefill included); TTFT and latency are measured from the moment "
         f"all requests were submitted. Every number is the median of {repeats} timed rounds after a warm-up "
         "round; each round runs every method back to back."),
        *lines,
        footer,
    ]
    with open(path, "w") as handle:
        handle.write("\n".join(text) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
