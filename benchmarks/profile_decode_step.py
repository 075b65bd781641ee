"""Where a plain decode step's time goes: per-step cost against rows, and a per-part profile.

    XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true python benchmarks/profile_decode_step.py
    MOE_IMPL=dense python benchmarks/profile_decode_step.py     # the decode benchmark's experts

The tiny preset (random weights), greedy, prompts of 64 tokens, cache capacity 192 (what the
continuous-batching benchmark's requests use). Prints:

* the cost of one decode step for 8, 32 and 128 rows (a 66-step loop minus a 2-step loop, best
  of 5, three times) and of prefilling the 64-token prompts;
* for 32 rows, XLA:CPU's thunks of 32 decode steps from a profiler trace, grouped by the model
  part their HLO op_name names (needs the traceme flag above; without it the trace has no
  per-thunk events and the table is empty). Parts are the pod planner's (``plan/hlo_flops``); a
  conditional's time includes the thunks of the branch it ran, so the indexer row is the whole
  top-k selection, and thunks with no model part (sampling, bookkeeping) are "other".
"""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from glm5_jax import GLM5Model, init_variables
from glm5_jax.config import tiny
from glm5_jax.plan import hlo_flops
from glm5_jax.sample import engine
from glm5_jax.sample.sampling import PolicyKind, make_policy

PROMPT, CAPACITY, OUT = 64, 192, 128
INDEXER_TOP_K = "indexer top-k (scores + TopK, bucketed conditional)"

MOE_IMPL = os.environ.get("MOE_IMPL", "ragged_dot")  # the routed experts' form (config.MOE_IMPLS)


def setup(rows: int):
    config = tiny().replace(initializer_range=0.1, moe_impl=MOE_IMPL)
    variables = init_variables(GLM5Model(config), jax.random.PRNGKey(0))
    policy = make_policy(0.0, 0, 1.0, None, OUT, 0)
    prefill_fn, loop_fn = engine.compiled(config, PolicyKind.of(0.0, 0, 1.0), CAPACITY, OUT, 0, "auto")
    prompt = jnp.asarray(np.random.RandomState(0).randint(2, config.vocab_size, (rows, PROMPT)), jnp.int32)
    lengths = jnp.full((rows,), PROMPT, jnp.int32)
    return variables, policy, prefill_fn, loop_fn, prompt, lengths


def step_costs(rows: int) -> tuple[list[float], float]:
    variables, policy, prefill_fn, loop_fn, prompt, lengths = setup(rows)

    def loop_seconds(steps: int) -> float:
        state = jax.block_until_ready(prefill_fn(variables, prompt, lengths, policy))
        start = time.perf_counter()
        jax.block_until_ready(loop_fn(variables, state, policy, jnp.int32(steps)))
        return time.perf_counter() - start

    loop_seconds(2), loop_seconds(66)
    per_step = [(min(loop_seconds(66) for _ in range(5)) - min(loop_seconds(2) for _ in range(5))) / 64
                for _ in range(3)]
    start = time.perf_counter()
    for _ in range(10):
        jax.block_until_ready(prefill_fn(variables, prompt, lengths, policy))
    return per_step, (time.perf_counter() - start) / 10


def part_of(op_name: str) -> str:
    """The planner's model parts (``plan/hlo_flops.part_of``, pass dropped: decode has one), except
    that a conditional inside attention is the indexer's bucketed top-k (its op_name names only
    ``self_attn/cond``, which the planner would count as attention)."""
    if "self_attn/cond" in op_name:
        return INDEXER_TOP_K
    return hlo_flops.part_of(op_name).rsplit(", ", 1)[0]

def profile(rows: int = 32, steps: int = 32) -> dict[str, float]:
    from jax.profiler import ProfileData

    variables, policy, prefill_fn, loop_fn, prompt, lengths = setup(rows)
    state = jax.block_until_ready(prefill_fn(variables, prompt, lengths, policy))
    hlo = loop_fn.lower(variables, state, policy, jnp.int32(steps)).compile().as_text()
    op_names = dict(re.findall(r'%([\w.-]+) = .*?op_name="([^"]*)"', hlo))
    jax.block_until_ready(loop_fn(variables, state, policy, jnp.int32(steps)))  # warm
    state = jax.block_until_ready(prefill_fn(variables, prompt, lengths, policy))
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        jax.block_until_ready(loop_fn(variables, state, policy, jnp.int32(steps)))
        jax.profiler.stop_trace()
        data = ProfileData.from_file(sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1])
    seconds: dict[str, float] = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                name = op_names.get(event.name)
                # A while loop's or a conditional branch's thunks are inside an enclosing event:
                # count the loop bodies' thunks and whole conditionals, each once.
                if name is None or event.name.startswith("while") or "/cond/branch_" in name:
                    continue
                seconds[part_of(name)] += event.duration_ns / 1e9 / steps
    return seconds


def main() -> None:
    print(f"load average {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} / {os.getloadavg()[2]:.2f}, "
          f"jax {jax.__version__}, backend {jax.default_backend()}, moe_impl {MOE_IMPL}")
    print("| rows | decode step ms (3 runs) | ms per row-step | prefill of 64-token prompts ms |")
    print("|---|---|---|---|")
    for rows in (8, 32, 128):
        per_step, prefill_s = step_costs(rows)
        median = float(np.median(per_step))
        print(f"| {rows} | {', '.join(f'{s * 1e3:.3f}' for s in per_step)} | {median / rows * 1e3:.4f} | "
              f"{prefill_s * 1e3:.1f} |")
    seconds = profile()
    total = sum(seconds.values())
    print(f"\nProfile, 32 rows, per decode step (thunks named by the trace: {total * 1e3:.3f} ms; the "
          "traceme flag slows the step):\n")
    print("| part | ms per step | share |")
    print("|---|---|---|")
    for part, value in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"| {part} | {value * 1e3:.3f} | {value / total:.0%} |")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
