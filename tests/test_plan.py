"""The planner: TPU topology names, collective bytes read from compiled HLO (trip counts
of scanned loops applied), and the CLI on small topologies (libtpu's real compiler, no
TPU needed): a search over the tiny preset's meshes fits and prints the JSON contract; a 2-layer glm5_full on
four v5e chips does not fit and says so in one sentence, exit 3, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from glm5_jax.plan.hlo_collectives import array_bytes, collective_stats
from glm5_jax.plan.topology import CHIPS, TopologyError, parse_topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSON_KEYS = {"fits", "peak_bytes_per_device", "hbm_bytes_per_device", "flops_per_device",
             "mesh", "topology"}


@pytest.mark.parametrize("name, chips, grid", [
    ("v5p-1024", 512, (8, 8, 8)), ("v5p-8", 4, (2, 2, 1)), ("v5p-32", 16, (2, 2, 4)),
    ("v5p-2048", 1024, (8, 8, 16)), ("v4-32", 16, (2, 2, 4)), ("v6e-256", 256, (16, 16)),
    ("v5litepod-16", 16, (4, 4)), ("v5e-8", 8, (2, 4)), ("v5p:4x4x8", 128, (4, 4, 8)),
])
def test_cloud_names_count_cores_or_chips_by_generation(name, chips, grid):
    topology = parse_topology(name)
    assert (topology.num_chips, topology.grid) == (chips, grid)


@pytest.mark.parametrize("name, fragment", [
    ("v5p-12", "power of two"), ("v5p-7", "N must be even"), ("v9-8", "unknown TPU generation"),
    ("v5p:8x8", "3 dimensions"), ("tpu", "not understood"),
])
def test_bad_topology_names_say_why(name, fragment):
    with pytest.raises(TopologyError, match=fragment):
        parse_topology(name)


def test_array_bytes_of_tuple_shapes():
    assert array_bytes("(bf16[2,3]{1,0}, f32[4]{0})") == 2 * 6 + 4 * 4
    assert array_bytes("(bf16[8]{0}, bf16[64]{0})", largest_only=True) == 128
    assert array_bytes("s32[]") == 4


def test_collectives_inside_a_scan_count_once_per_iteration():
    """A 6-step scan whose weights are sharded over 8 chips: every step all-gathers one
    [512, 512] bf16 weight forward and backward, and all-reduces its gradient."""
    from test_tpu_hlo_counts import WIDTH as width
    from test_tpu_hlo_counts import scanned_grad, v5p16_mesh

    layers = 6
    compiled = scanned_grad(layers, v5p16_mesh())
    stats = collective_stats(compiled.as_text())
    weight_bytes = width * width * 2
    assert stats.unknown_trip_counts == 0
    assert stats.count_by_kind["all-gather"] == 2 * layers
    assert stats.bytes_by_kind["all-gather"] == 2 * layers * weight_bytes
    assert stats.bytes_by_kind["all-reduce"] == layers * weight_bytes


def run_planner(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "glm5_jax.plan", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)


def test_tiny_preset_search_ranks_what_fits_and_prints_the_best_plan_as_the_json_contract():
    """One planner run (two TPU compiles): the search over meshes, and the best plan's JSON
    contract, which is the same whether a mesh was searched or given (--config.mesh is
    exercised by the does-not-fit test below)."""
    completed = run_planner("--config=experiments/tiny.py", "--topology=v5p-8", "--search",
                            "--search_budget=2", "--stages=sparse")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "plans that fit, fastest first:" in completed.stdout
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert JSON_KEYS <= set(report)
    assert report["fits"] is True and report["topology"] == "v5p-8" and report["chips"] == 4
    assert len(report["search"]) == 2
    best = dict(part.split("=") for part in report["search"][0]["mesh"].split(","))
    assert report["mesh"] == {"data": 1, **{axis: int(size) for axis, size in best.items()}}
    assert report["hbm_bytes_per_device"] == CHIPS["v5p"].hbm_bytes
    assert 0 < report["peak_bytes_per_device"] < report["hbm_bytes_per_device"]
    assert report["peak_bytes_per_device"] == report["search"][0]["peak_bytes_per_device"]
    # What the chip holds: parameters and optimizer state are part of the peak.
    held = report["params_bytes_per_device"] + report["optimizer_bytes_per_device"]
    assert 0 < held < report["peak_bytes_per_device"]
    # The compiled step does at least the model's FLOPs (3 x forward) per device.
    assert report["flops_per_device"] >= report["model_flops_per_device"] > 0
    assert 0 < report["mfu"] < 1
    assert "| sparse | yes |" in completed.stdout


def test_full_model_on_four_small_chips_exits_3_with_one_sentence():
    completed = run_planner("--config=experiments/glm5_full.py", "--topology=v5e-4",
                            "--stages=dense", "--config.seq_len=128", "--config.batch_size=4",
                            "--config.model_overrides.num_hidden_layers=2",
                            "--config.model_overrides.first_k_dense_replace=1",
                            "--config.mesh=fsdp=4")
    assert completed.returncode == 3, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    sentence = [line for line in completed.stdout.splitlines() if line.startswith("does not fit")]
    assert len(sentence) == 1 and "v5e-4" in sentence[0] and "x over" in sentence[0]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["fits"] is False
    assert report["peak_bytes_per_device"] > report["hbm_bytes_per_device"]


def test_usage_errors_exit_2_without_a_traceback():
    completed = run_planner("--config=experiments/tiny.py", "--topology=v5p-12")
    assert completed.returncode == 2
    assert "power of two" in completed.stderr and "Traceback" not in completed.stderr
    completed = run_planner("--config=experiments/tiny.py", "--topology=v5p-8",
                            "--config.mesh=fsdp=3")
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert "mesh" in completed.stderr


def test_search_candidates_divide_everything_and_the_likeliest_to_fit_come_first():
    from glm5_jax.plan.search import candidates
    from glm5_jax.sharding import parse_mesh_spec

    from glm5_jax.train.experiment import load_experiment

    config = load_experiment(os.path.join(ROOT, "experiments", "glm5_full.py"), seq_len=4096,
                             batch_size=256)
    found = candidates(config, 512)
    assert len(found) > 10
    for c in found:
        sizes = parse_mesh_spec(c.mesh, 512)
        assert 256 % sizes["expert"] == 0 and 64 % sizes["tensor"] == 0
        assert (256 // c.grad_accum_steps) % (sizes["fsdp"] * sizes["expert"]) == 0
        assert 4096 % sizes["context"] == 0

    def tokens_per_chip(c):
        sizes = parse_mesh_spec(c.mesh, 512)
        return 256 * 4096 / c.grad_accum_steps / (
            sizes["fsdp"] * sizes["expert"] * sizes["context"] * sizes["tensor"])

    assert [tokens_per_chip(c) for c in found] == sorted(tokens_per_chip(c) for c in found)
    assert found[0].remat_policy == "full"


def test_a_vmem_refusal_reads_as_the_compilers_sentence_not_an_hbm_overflow():
    from glm5_jax.plan.planner import Plan, StagePlan
    from glm5_jax.plan.report import does_not_fit_sentence

    refusal = "RESOURCE_EXHAUSTED: E1001: CompileTimeScopedVmemOom: Ran out of memory in memory space vmem"
    stages = [StagePlan("sparse", False, 2e9, 2e9, 0.0, 0.0, 0.0, 0.0, compiler_refused=refusal)]
    plan = Plan(parse_topology("v5p-8"), {"fsdp": 4}, None, 1e9, 1e9, 1e12, stages)
    sentence = does_not_fit_sentence(plan)
    assert "refused stage sparse on v5p-8" in sentence and "CompileTimeScopedVmemOom" in sentence
    assert "x over" not in sentence
