"""Every paper table at smoke scale, end to end: ``python -m glm5_jax.reproduce NAME --scale=smoke``
into a temporary directory, then table.json's structure and values and the plots are checked.

Smoke numbers only show the pipeline works (models trained for a few steps), so the checks are
of shape and sanity: every row done, every number finite and in its range, relations that hold
by construction (the dense baseline's active parameters are the MoE's minus its router; no
drafts means an accepted length of 1), the plots are PNGs, the sandbox judged every sample.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glm5_jax.reproduce.scales import REPO
from child_env import child_env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def reproduce(name: str, workdir: Path, *extra: str, scale: str = "smoke") -> subprocess.CompletedProcess:
    env = child_env()  # one CPU device, as a user has
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".jax_cache"))  # shared with the suite
    result = subprocess.run([sys.executable, "-m", "glm5_jax.reproduce", name, f"--scale={scale}",
                             f"--workdir={workdir}", *extra], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def load_table(workdir: Path, name: str, scale: str = "smoke") -> dict:
    table = json.loads((workdir / "table.json").read_text())
    assert table["name"] == name and table["scale"] == scale
    assert table["paper"] and all(claim["source"] for claim in table["paper"])
    assert table["rows"], "a table without rows"
    assert table["provenance"]["commit"] and table["provenance"]["command"].startswith(
        f"python -m glm5_jax.reproduce {name} --scale={scale}")
    assert (workdir / "table.md").read_text().startswith("### ")
    assert table["plots"]
    for plot in table["plots"]:
        assert (workdir / plot).read_bytes()[:8] == PNG_MAGIC
    return table


def finite(value, low: float = -math.inf, high: float = math.inf) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high


def test_cost_table(tmp_path):
    reproduce("cost", tmp_path)
    table = load_table(tmp_path, "cost")
    assert table["status"] == "complete"
    rows = {row["variant"]: row for row in table["rows"]}
    assert set(rows) == {"dense", "moe", "moe_dsa", "moe_dynamic"}
    for variant, row in rows.items():
        assert row["status"] == "done"
        assert finite(row["eval_ce"], 0.0, math.log(320) + 2), (variant, row["eval_ce"])
        for key in ("train_flops", "train_flops_formula", "prefill_flops", "decode_flops",
                    "train_tokens_per_s", "decode_tokens_per_s", "active_params"):
            assert finite(row[key], 1e-9), (variant, key, row[key])
        # The compiled step does the formula's work plus the indexer loss and padding, not 4x it.
        assert row["train_flops_formula"] <= row["train_flops"] < 4 * row["train_flops_formula"]
        assert row["provenance"]["config"] == "experiments/paper/cost.py:smoke"
        assert row["provenance"]["commit"] and row["provenance"]["seed"] == 0
        assert (tmp_path / row["provenance"]["workdir"] / "metrics.jsonl").exists()
    # dense_baseline: each MoE layer as one MLP of the active width, so the dense row's active
    # parameters are the MoE's minus the router (hidden x n_routed per MoE layer, 1 layer here).
    hidden, routed_experts, moe_layers = 32, 8, 1
    assert rows["moe"]["active_params"] - rows["dense"]["active_params"] == hidden * routed_experts * moe_layers
    assert rows["moe"]["routed_experts"] == 2 and rows["dense"]["routed_experts"] is None
    assert 1 <= rows["moe_dynamic"]["routed_experts"] <= 2
    # Rerunning resumes: nothing is retrained or remeasured.
    again = reproduce("cost", tmp_path)
    assert again.stdout.count("done before: skipped") == 4
    assert json.loads((tmp_path / "table.json").read_text())["rows"][0]["eval_ce"] == table["rows"][0]["eval_ce"]


def test_cost_table_at_pod_scale_writes_configs_and_commands(tmp_path):
    reproduce("cost", tmp_path, scale="pod")
    table = load_table(tmp_path, "cost", scale="pod")
    assert table["status"] == "planned" and len(table["rows"]) == 12
    commands = (tmp_path / "pod" / "commands.sh").read_text()
    for row in table["rows"]:
        assert (tmp_path / "pod" / f"{row['row']}.json").exists()
        assert f"--workdir=gs://YOUR_BUCKET/repro/cost/{row['row']} " in commands
        assert finite(row["train_flops_formula"], 1e9) and row["active_params"] <= row["total_params"]
    assert commands.count("python -m glm5_jax.plan --config=experiments/paper/cost.py:pod") == 12
    assert commands.count("launch/tpu.py") == 12


def test_long_context_table(tmp_path):
    reproduce("long_context", tmp_path)
    table = load_table(tmp_path, "long_context")
    assert table["status"] == "complete"
    rows = {row["row"]: row for row in table["rows"]}
    assert set(rows) == {"dense_mla", "dsa"}
    assert rows["dsa"]["index_topk"] < 128 <= rows["dense_mla"]["index_topk"]  # sparse vs dense at eval
    for row in rows.values():
        for keys in (1, 2):  # single needle and 2-key recall
            for length in (128, 256):
                assert finite(row[f"acc_k{keys}_{length}"], 0.0, 1.0)
            assert row[f"retention_k{keys}"] is None or finite(row[f"retention_k{keys}"], 0.0)
        for length in (64, 128):
            assert finite(row[f"prefill_s_{length}"], 1e-7, 60.0)


def test_code_benchmarks_table_and_mtp_acceptance_on_its_model(tmp_path):
    """code_benchmarks and mtp_acceptance evaluate the same pretrained model: the
    code_benchmarks run trains it, and mtp_acceptance takes it through --table.checkpoint (the
    option a user has for the same reuse), so the suite trains it once."""
    check_code_benchmarks_table(tmp_path / "code_benchmarks")
    check_mtp_acceptance_table(tmp_path / "mtp_acceptance",
                               tmp_path / "code_benchmarks" / "points" / "pretrained-seed0")


def check_code_benchmarks_table(tmp_path: Path) -> None:
    reproduce("code_benchmarks", tmp_path)
    table = load_table(tmp_path, "code_benchmarks")
    assert table["status"] == "complete"
    rows = {row["model"]: row for row in table["rows"]}
    assert rows["GLM-5"]["humaneval_pass@1"] == 78.3 and rows["GLM-5"]["mbpp_pass@1"] == 84.1
    ours = rows["pretrained-seed0"]
    for benchmark in ("humaneval", "mbpp"):
        for k in (1, 2):
            assert finite(ours[f"{benchmark}_pass@{k}"], 0.0, 100.0)
        assert ours[f"{benchmark}_samples"] == 3 * 2
        judged = (tmp_path / "samples" / "pretrained-seed0" / f"samples_{benchmark}.jsonl_results.jsonl")
        results = [json.loads(line) for line in judged.read_text().splitlines()]
        assert len(results) == 6 and all("passed" in r and r["status"] for r in results)
    assert rows["after RL"]["status"] == "not measured"


def _write_run(directory: Path, evals: list[tuple[float, float]], steps_per_s: float) -> None:
    """A run in the RL benchmark's format: metrics.jsonl per learner step, eval.jsonl per snapshot."""
    directory.mkdir(parents=True)
    steps = 10
    metrics = [{"step": s, "wall_time": s / steps_per_s, "learner_idle_fraction": 0.1, "worker_utilisation": 0.9,
                "tokens_per_s/generated": 100.0, "buffer/dropped": 0, "staleness_histogram": {"0": 8},
                "wait_s": 0.6, "train_s": 0.3} for s in range(1, steps + 1)]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    records = []
    for split in ("train", "held_out"):
        for step, (wall, reward) in enumerate(evals):
            records.append({"split": split, "step": step * 5, "wall_time": wall, "reward": reward,
                            "reward_stderr": 0.05, "samples": step * 40, "pass_rate": reward / 2})
    (directory / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_async_rl_table_reads_fragments_and_runs(tmp_path):
    runs = tmp_path / "runs"
    # Rewards 0.2 -> 0.6: the target is 0.2 + 0.7 * 0.4 = 0.48, reached at 70% of each climb,
    # 70 s lock-step and 28 s async: a ratio of 2.5.
    _write_run(runs / "seed0" / "sync", [(0.0, 0.2), (100.0, 0.6)], steps_per_s=0.1)
    _write_run(runs / "seed0" / "async", [(0.0, 0.2), (40.0, 0.6), (80.0, 0.5)], steps_per_s=0.125)
    workdir = tmp_path / "table"
    reproduce("async_rl", workdir, f"--table.run_dirs=('{runs}',)")
    table = load_table(workdir, "async_rl")
    fragment_rows = [r for r in table["rows"] if r["source"].startswith("rl.md") and r["seed"] != "median"]
    assert [r["seed"] for r in fragment_rows] == [0, 1, 2, 3, 4]
    assert all(finite(r["ceiling"], 1.0) and finite(r["final_async"], 0.0) for r in fragment_rows)
    # A seed whose target lies within the evaluation noise has no ratio ("no target outside
    # noise" in rl.md); the others have a finite one.
    assert all(r["ratio"] is None or finite(r["ratio"], 0.0) for r in fragment_rows)
    assert [r["seed"] for r in fragment_rows if r["ratio"] is not None] == [2, 4]
    run_rows = [r for r in table["rows"] if r["source"] == f"runs in {runs}"]
    assert run_rows[0]["ratio"] == pytest.approx(2.5)
    assert run_rows[0]["final_diff"] == pytest.approx(0.5 - 0.6)
    assert run_rows[0]["steps_per_s_ratio"] == pytest.approx(1.25)


def check_mtp_acceptance_table(tmp_path: Path, pretrained: Path) -> None:
    reproduce("mtp_acceptance", tmp_path, f"--table.checkpoint={pretrained}")
    table = load_table(tmp_path, "mtp_acceptance")
    assert table["status"] == "complete"
    rows = {row["speculative_steps"]: row for row in table["rows"]}
    assert sorted(rows) == [0, 1, 2, 3, 4]
    assert rows[0]["accept_length"] == 1.0 and rows[0]["speedup"] == 1.0
    for steps, row in rows.items():
        assert finite(row["accept_length"], 1.0, steps + 1.0)
        assert finite(row["tokens_per_s"], 1e-6)
    assert table["comparison"][0]["paper"] == 2.76
