"""The sweep runner: a grid of points, one workdir each, a table and a plot; a rerun skips
finished points; a failing point is recorded and the others go on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glm5_jax.errors import UserError
from glm5_jax.sweep.grid import grid, parse_axis, point_name
from glm5_jax.train.testing import REPO, TEST_TOTAL_STEPS, write_test_corpus

EXPERIMENT = """
from glm5_jax.train.testing import cpu_test_config

def get_config():
    return cpu_test_config({corpus!r}, {data_dir!r})
"""


def test_grid_is_the_product_of_the_axes_first_axis_slowest():
    points = grid(["learning_rate=1e-3,3e-3", "model_overrides.router_mode=static,dynamic"])
    assert points == [
        {"learning_rate": "1e-3", "model_overrides.router_mode": "static"},
        {"learning_rate": "1e-3", "model_overrides.router_mode": "dynamic"},
        {"learning_rate": "3e-3", "model_overrides.router_mode": "static"},
        {"learning_rate": "3e-3", "model_overrides.router_mode": "dynamic"}]
    assert len({point_name(p) for p in points}) == 4
    assert point_name(points[1]) == "learning_rate=1e-3,router_mode=dynamic"


@pytest.mark.parametrize("axis", ["learning_rate", "=1,2", "learning_rate="])
def test_malformed_axes_say_how_to_write_one(axis):
    with pytest.raises(UserError, match="key=value1,value2"):
        parse_axis(axis)


def _sweep(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per point
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "glm5_jax.sweep", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_sweep_runs_records_failures_and_reruns_as_a_no_op(tmp_path):
    corpus = write_test_corpus(tmp_path / "corpus")
    experiment = tmp_path / "experiment.py"
    experiment.write_text(EXPERIMENT.format(corpus=str(corpus), data_dir=str(tmp_path / "data")))
    sweep_dir = tmp_path / "sweep"
    # warmup_steps=99 > total_steps: that point's config is invalid and must fail alone.
    args = [f"--config={experiment}", f"--workdir={sweep_dir}", "--axis=warmup_steps=1,2,99",
            f"--config.total_steps={TEST_TOTAL_STEPS // 4}", "--config.checkpoint_every=1"]
    first = _sweep(args)
    assert first.returncode == 1, first.stdout + first.stderr
    rows = {r["overrides"]["warmup_steps"]: r for r in
            map(json.loads, (sweep_dir / "results.jsonl").read_text().splitlines())}
    assert rows["1"]["status"] == rows["2"]["status"] == "done"
    assert rows["1"]["steps"] == rows["2"]["steps"] == TEST_TOTAL_STEPS // 4
    assert rows["1"]["final_loss"] > 0 and rows["1"]["tokens_per_second"] > 0
    assert rows["99"]["status"] == "failed" and "warmup_steps=99" in rows["99"]["error"]
    table = (sweep_dir / "results.md").read_text()
    assert "| warmup_steps |" in table and "failed" in table
    assert (sweep_dir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = {n: (sweep_dir / "points" / f"warmup_steps={n}" / "metrics.jsonl").read_text()
               for n in ("1", "2")}
    again = _sweep(args)
    assert again.returncode == 1
    assert again.stdout.count("done before: skipped") == 2
    for n, text in metrics.items():  # finished points were not run again
        assert (sweep_dir / "points" / f"warmup_steps={n}" / "metrics.jsonl").read_text() == text


def test_unknown_override_in_an_axis_exits_2_naming_it(tmp_path):
    result = _sweep([f"--config={REPO / 'experiments' / 'tiny.py'}", f"--workdir={tmp_path}",
                     "--axis=model_overrides.nmu_layers=1,2"])
    assert result.returncode == 2
    assert "nmu_layers" in result.stderr and "Traceback" not in result.stderr
