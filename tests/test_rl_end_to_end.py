"""The whole system on a shrunken tiny policy: worker processes, the buffer, the learner.

A worker is killed with SIGKILL in the middle of an order: the learner keeps training, the
worker is restarted, and every episode stays accounted for exactly once. The run then resumes
from its checkpoint, the entry point runs lock-step mode, and the Ray backend runs the same
experiment.
"""

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from glm5_jax.rl.loop import train

REPO = Path(__file__).resolve().parents[1]
SMALL_CONFIG = '''
import importlib.util
from pathlib import Path


def get_config():
    spec = importlib.util.spec_from_file_location("rl_base", {base!r})
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    overrides = {overrides!r}
    for key, value in overrides.items():
        target = config
        *path, leaf = key.split(".")
        for part in path:
            target = target[part]
        target[leaf] = value
    return config
'''
OVERRIDES = {
    "model_overrides": {"num_hidden_layers": 2, "first_k_dense_replace": 1, "num_mtp_layers": 0},
    "tasks.levels": (1,),  # prompts of one length bucket: one sampler compilation
    "environment.kind": "single_turn",
    "group_size": 4, "groups_per_order": 1, "groups_per_batch": 2, "capacity_groups": 4,
    "seq_len": 32, "max_new_tokens": 20, "warm_start.steps": 0, "warm_start.cache_dir": "",
    "num_workers": 2, "sandbox_workers": 1, "total_steps": 4, "checkpoint_every": 2,
    "worker_start_timeout_s": 600.0, "batch_timeout_s": 600.0,
    "compilation_cache_dir": str(REPO / ".jax_cache"),
}


def small_config(tmp_path: Path, **changes):
    path = tmp_path / "small_rl.py"
    path.write_text(SMALL_CONFIG.format(base=str(REPO / "experiments" / "rl" / "tiny_async.py"),
                                        overrides={**OVERRIDES, **changes}))
    spec = importlib.util.spec_from_file_location("small_rl", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(), path


def read_metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_accounted(record: dict) -> None:
    assert record["buffer/generated"] == (record["buffer/consumed"] + record["buffer/dropped"]
                                          + record["buffer/buffered"])
    assert record["buffer/dispatched"] == (record["buffer/generated"] + record["buffer/lost"]
                                           + record["buffer/running"])
    assert record["buffer/duplicates"] == 0


def test_async_run_survives_a_sigkilled_worker_and_resumes(tmp_path):
    config, _ = small_config(tmp_path)
    workdir = tmp_path / "run"
    kill = {}

    def kill_worker_mid_order(coordinator):
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # as soon as worker 0 owes episodes, SIGKILL it
            with coordinator.lock:
                owed = coordinator.outstanding_by_worker().get(0)
                if owed:
                    kill["pid"] = coordinator.pool.kill(0)
                    kill["owed"] = len(owed)
                    kill["lost_before"] = coordinator.buffer.accounting.lost
                    return
            time.sleep(0.005)

    def on_step(step, coordinator):
        if step == 1:  # the learner goes on while a helper thread waits for the moment
            killer = threading.Thread(target=kill_worker_mid_order, args=(coordinator,))
            killer.start()
            kill["thread"] = killer

    last = train(config, workdir, on_step=on_step)
    kill["thread"].join()
    assert kill.get("owed", 0) > 0, "worker 0 never received an order"
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # the learner kept going
    assert last["workers/restarts"] == 1
    # Episodes it owed either reached the buffer before it died or are counted lost; none twice.
    assert 0 <= last["buffer/lost"] - kill["lost_before"] <= kill["owed"]
    for record in records:
        assert_accounted(record)
        assert max(map(int, record["staleness_histogram"])) <= config.max_staleness
    assert sum(r["samples"] for r in records) == last["buffer/consumed"]
    assert records[-1]["policy_version"] == 4

    # Resume: the checkpoint at step 4 carries the learner and the buffer's books.
    config.total_steps = 6
    resumed = train(config, workdir)
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert resumed["policy_version"] == 6
    assert resumed["buffer/consumed"] >= last["buffer/consumed"] + 2 * 2 * 4 - 2 * 4  # padding aside
    assert resumed["buffer/lost"] >= last["buffer/lost"] + last["buffer/running"]
    assert_accounted(resumed)


def test_entry_point_runs_lock_step_mode(tmp_path):
    _, config_path = small_config(tmp_path, num_workers=1, total_steps=2)
    workdir = tmp_path / "sync"
    completed = subprocess.run(
        [sys.executable, "-m", "glm5_jax.rl", f"--config={config_path}", f"--workdir={workdir}",
         "--config.mode=sync", "--config.eval.every=1", "--config.eval.batch_rows=8"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert completed.returncode == 0, completed.stderr[-3000:]
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2]
    # Lock-step: every sample was generated by the weights being trained.
    assert all(r["staleness_histogram"] == {"0": 8} for r in records)
    for record in records:
        assert_accounted(record)
        for key in ("wall_time", "policy_version", "reward", "reward/correct", "pass_rate",
                    "dropped_samples", "learner_idle_fraction", "worker_utilisation",
                    "tokens_per_s/generated", "tokens_per_s/trained"):
            assert key in record

    # Fixed evaluation of the kept snapshots (warm start + every step), then resumed: no repeats.
    evaluate = [sys.executable, "-m", "glm5_jax.rl.evaluation", f"--workdir={workdir}",
                "--samples_per_task=1"]
    for _ in range(2):
        completed = subprocess.run(evaluate, cwd=REPO, capture_output=True, text=True, timeout=900,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
        assert completed.returncode == 0, completed.stderr[-3000:]
    results = [json.loads(line) for line in (workdir / "eval.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in results] == [
        (step, split) for step in (0, 1, 2) for split in ("train", "held_out")]
    samples = {r["step"]: r["samples"] for r in results}
    assert samples == {0: 0, 1: records[0]["buffer/consumed"], 2: records[1]["buffer/consumed"]}
    for result in results:
        # Level 1 has 29 tasks; 20% of them (6) are held out and never trained on.
        assert result["tasks"] == (23 if result["split"] == "train" else 6)
        assert result["episodes"] == result["tasks"]
        assert 0.0 <= result["pass_rate"] <= 1.0 and "reward/correct" in result


def test_ray_backend_runs_the_same_experiment(tmp_path):
    pytest.importorskip("ray")
    config, _ = small_config(tmp_path, backend="ray", num_workers=1, total_steps=2,
                             checkpoint_every=0, ray_num_cpus=2)
    last = train(config, tmp_path / "ray")
    assert last["step"] == 2 and last["workers/ready"] == 1
    assert_accounted(last)
