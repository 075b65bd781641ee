"""Train-step MFU of a ~1B GLM-5-shaped model on one accelerator, on synthetic tokens.

    python benchmarks/bench_train_step_device.py --steps 10 --out benchmarks/results/train_gpu.md

Why synthetic tokens: the accelerator machine has no corpus and no network; the step's
cost does not depend on which token ids it sees. The step is the train loop's own
(``make_train_step`` with ``experiments/tiny.py``'s losses, optimizer and schedule), built
for the model below, for the dense stage and for DSA stage 2 (sparse attention, indexer
KL). MFU counts ``training_flops_per_token`` (3 x forward matmul and attention FLOPs)
against the device's peak from ``glm5_jax.train.flops``; the measured bf16 matmul rate
of the same device is printed beside it, so MFU against what the chip really does can be
read too. Times are medians over ``--steps`` steps after a compile and a warm-up step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from glm5_jax.model.param_count import count_parameters  # noqa: E402
from glm5_jax.model.transformer import GLM5Model  # noqa: E402
from glm5_jax.model.variables import logical_partition_specs  # noqa: E402
from glm5_jax.sharding import activate, make_mesh  # noqa: E402
from glm5_jax.train.experiment import DENSE, SPARSE, load_experiment, model_config_from  # noqa: E402
from glm5_jax.train.flops import peak_flops_per_device, training_flops_per_token  # noqa: E402
from glm5_jax.train.optimizer import make_optimizer  # noqa: E402
from glm5_jax.train.train_state import init_train_state  # noqa: E402
from glm5_jax.train.train_step import make_train_step  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# 1.6B parameters (1.47B without the MTP module), 0.38B active per token: GLM-5's structure (MLA, DSA indexer on every
# layer, grouped sigmoid MoE with a shared expert, one MTP module) at a size one GPU trains.
ONE_B = dict(
    hidden_size=1536, intermediate_size=4096, moe_intermediate_size=768,
    num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=16,
    q_lora_rank=768, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32,
    v_head_dim=64, n_routed_experts=32, n_shared_experts=1, num_experts_per_tok=4,
    n_group=4, topk_group=2, first_k_dense_replace=1, index_topk=512, index_n_heads=8,
    index_head_dim=64, indexer_types=("full",) * 12, num_mtp_layers=1, mtp_num_steps=1,
    router_k_max=8, moe_impl="ragged_dot", max_position_embeddings=8192,
)


def matmul_rate() -> float:
    """Measured bf16 FLOP/s of an 8192^3 matmul (median of 10 after a warm-up)."""
    a = jnp.ones((8192, 8192), jnp.bfloat16)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * 8192**3 / statistics.median(times)


def synthetic_batch(rng: np.random.Generator, batch: int, seq: int, vocab: int) -> dict:
    tokens = rng.integers(3, vocab, size=(batch, seq + 1))
    return {
        "inputs": jnp.asarray(tokens[:, :-1], jnp.int32),
        "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
        "positions": jnp.tile(jnp.arange(seq, dtype=jnp.int32), (batch, 1)),
        "segment_ids": jnp.ones((batch, seq), jnp.int32),
        "loss_mask": jnp.ones((batch, seq), jnp.float32),
    }


def bench_stage(stage, model_config, config, steps, seed) -> dict:
    model = GLM5Model(model_config)
    mesh = make_mesh("")
    with activate(mesh):
        specs = logical_partition_specs(model)["params"]
        optimizer, schedule = make_optimizer(config, specs)
        state = jax.jit(lambda: init_train_state(model, optimizer, config.seed))()
        step = jax.jit(make_train_step(model_config, config, optimizer, schedule, stage),
                       donate_argnums=0)
        rng = np.random.default_rng(seed)
        batches = [synthetic_batch(rng, config.batch_size, config.seq_len,
                                   model_config.vocab_size) for _ in range(steps + 1)]
        start = time.perf_counter()
        state, metrics = step(state, batches[0])
        jax.block_until_ready(state)
        compile_s = time.perf_counter() - start
        times = []
        for batch in batches[1:]:
            begin = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - begin)
    return {"stage": stage, "compile_s": compile_s, "step_s": statistics.median(times),
            "loss": float(metrics["loss"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--vocab_size", type=int, default=32768)
    parser.add_argument("--small", action="store_true", help="a CPU-sized smoke run")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    config = load_experiment(os.path.join(ROOT, "experiments", "tiny.py"))
    config.seq_len, config.batch_size = args.seq_len, args.batch_size
    config.compute_dtype = "bfloat16" if jax.default_backend() != "cpu" else "float32"
    overrides = dict(ONE_B)
    if args.small:
        overrides.update(hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                         num_hidden_layers=2, indexer_types=("full",) * 2, index_topk=16,
                         q_lora_rank=32, kv_lora_rank=32, num_attention_heads=4,
                         num_key_value_heads=4, qk_nope_head_dim=16, qk_rope_head_dim=8,
                         v_head_dim=16, n_routed_experts=8, index_n_heads=4,
                         index_head_dim=16, n_group=2, topk_group=1, moe_impl="blocked")
    for key, value in overrides.items():
        config.model_overrides[key] = value
    model_config = model_config_from(config, args.vocab_size)
    counts = count_parameters(model_config)
    flops_per_token = {stage: training_flops_per_token(
        model_config if stage == SPARSE else model_config.replace(index_topk=config.seq_len),
        config.seq_len) for stage in (DENSE, SPARSE)}
    peak, peak_source = peak_flops_per_device()
    measured = matmul_rate() if jax.default_backend() != "cpu" else float("nan")
    tokens = config.batch_size * config.seq_len
    lines = [
        "## Train-step MFU on one accelerator (~1B GLM-5-shaped model, synthetic tokens)",
        "",
        f"Command: `python {' '.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])}`  ",
        f"Device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
        f"peak {peak / 1e12:.4g} TFLOP/s ({peak_source}); measured bf16 8192^3 matmul "
        f"{measured / 1e12:.4g} TFLOP/s.  ",
        f"Model: {counts['total'] / 1e9:.2f}B parameters, "
        f"{counts['active_per_token'] / 1e9:.2f}B active per token; seq {config.seq_len} x "
        f"batch {config.batch_size} = {tokens} tokens per step; {config.compute_dtype} compute, "
        f"{config.param_dtype} master weights, {config.optimizer}; no rematerialisation.",
        "",
        "| stage | step | tokens/s | FLOPs/token | MFU (peak) | MFU (measured matmul) "
        "| compile | loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage in (DENSE, SPARSE):
        try:
            result = bench_stage(stage, model_config, config, args.steps, seed=0)
        except Exception as error:  # noqa: BLE001 -- report the other stage regardless
            lines.append(f"| {stage} | FAILED: {type(error).__name__}: "
                         f"{str(error).splitlines()[0][:200]} | | | | | | |")
            continue
        rate = tokens / result["step_s"]
        achieved = rate * flops_per_token[stage]
        lines.append(
            f"| {stage} | {1e3 * result['step_s']:.1f} ms | {rate:,.0f} | "
            f"{flops_per_token[stage] / 1e9:.2f} G | {100 * achieved / peak:.1f}% | "
            f"{100 * achieved / measured:.1f}% | {result['compile_s']:.0f} s | "
            f"{result['loss']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
