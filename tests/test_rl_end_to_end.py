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

from glm5_jax.rl.checkpoint import RunCheckpointer
from glm5_jax.rl.loop import train, validate

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
    assert record["buffer/dropped"] == sum(record[f"buffer/dropped_{reason}"]
                                           for reason in ("stale", "env_crashed", "group_too_small"))
    assert record["buffer/duplicates"] == 0


def assert_records_consistent(records: list[dict], config, previous: dict | None = None) -> None:
    """Values, not just keys: each record agrees with itself, the config and the one before."""
    weights = config.reward
    for record in records:
        assert_accounted(record)
        assert record["policy_version"] == record["step"]  # sync_every=1: one push per step
        assert record["samples"] == sum(record["staleness_histogram"].values())
        assert 0 < record["samples"] <= config.groups_per_batch * config.group_size
        assert max(map(int, record["staleness_histogram"])) <= config.max_staleness
        assert record["dropped_samples"] == record["buffer/dropped"]
        # Single-turn episodes: the reward is the hierarchical sum of the (averaged) terms;
        # the lower terms are each in [0, 1] and count only for passing samples.
        assert record["reward/correct"] == pytest.approx(record["pass_rate"], abs=1e-12)
        floor = weights.correct * record["reward/correct"] + \
            weights.fraction_passed * record["reward/fraction_passed"]
        ceiling = floor + (weights.simplicity + weights.cleanliness + weights.feedback) * record["pass_rate"]
        assert floor - 1e-9 <= record["reward"] <= ceiling + 1e-9
        assert 0.0 <= record["reward/fraction_passed"] <= 1.0 and 0.0 <= record["pass_rate"] <= 1.0
        assert 0.0 <= record["learner_idle_fraction"] <= 1.0
        assert 0.0 < record["worker_utilisation"] <= 1.0
        assert record["wall_time"] > 0 and record["tokens_per_s/trained"] > 0
        assert record["workers/generated_tokens"] > 0 and record["tokens_per_s/generated"] > 0
        assert record["weight_sync_bytes"] > 0 and record["learner/grad_norm"] >= 0
        if record["reward"] == 0.0:  # rewards are >= 0: all zero, so every advantage is zero
            assert record["learner/loss"] == 0.0 and record["learner/grad_norm"] == 0.0
        if previous is not None:  # the books only grow, by exactly what the step consumed
            assert record["step"] == previous["step"] + 1
            assert record["wall_time"] > previous["wall_time"]
            assert record["buffer/consumed"] - previous["buffer/consumed"] == record["samples"]
            assert record["buffer/groups_consumed"] - previous["buffer/groups_consumed"] == \
                config.groups_per_batch
            for key in ("dispatched", "generated", "lost", "dropped", "padded"):
                assert record[f"buffer/{key}"] >= previous[f"buffer/{key}"], key
        else:
            assert record["step"] == 1 and record["buffer/consumed"] == record["samples"]
            assert record["buffer/groups_consumed"] == config.groups_per_batch
        previous = record


def assert_rates_from_a_fresh_clock(record: dict) -> None:
    """Without a resume the rates' denominator is the record's own wall time."""
    assert record["tokens_per_s/generated"] * record["wall_time"] == pytest.approx(
        record["workers/generated_tokens"], rel=1e-9)


def test_async_run_survives_a_sigkilled_worker_and_resumes(tmp_path, monkeypatch):
    config, _ = small_config(tmp_path)
    workdir = tmp_path / "run"
    kill = {"lost_ids": [], "filed_ids": []}

    def record_the_books(buffer):
        """From the kill on, note which episodes the buffer files and which it counts lost."""
        mark_lost, add = buffer.mark_lost, buffer.add

        def recording_mark_lost(group_id, episode_id):
            before = buffer.accounting.lost
            mark_lost(group_id, episode_id)
            if buffer.accounting.lost != before:
                kill["lost_ids"].append(episode_id)

        def recording_add(trajectory):
            filed = add(trajectory)
            if filed:
                kill["filed_ids"].append(trajectory.episode_id)
            return filed

        buffer.mark_lost, buffer.add = recording_mark_lost, recording_add

    def kill_worker_mid_order(coordinator):
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # as soon as worker 0 owes episodes, SIGKILL it
            with coordinator.lock:
                owed = coordinator.outstanding_by_worker().get(0)
                if owed:
                    record_the_books(coordinator.buffer)
                    kill["pid"] = coordinator.pool.kill(0)
                    kill["owed"] = list(owed)
                    kill["lost_before"] = coordinator.buffer.accounting.lost
                    kill["coordinator"] = coordinator
                    return
            time.sleep(0.005)

    def on_step(step, coordinator):
        if step == 1:  # the learner goes on while a helper thread waits for the moment
            killer = threading.Thread(target=kill_worker_mid_order, args=(coordinator,))
            killer.start()
            kill["thread"] = killer

    saved_runs = {}  # what each checkpoint wrote for the run (its buffer's books)
    save = RunCheckpointer.save

    def recording_save(self, step, state, run):
        saved_runs[step] = json.loads(json.dumps(run))
        save(self, step, state, run)

    monkeypatch.setattr(RunCheckpointer, "save", recording_save)

    last = train(config, workdir, on_step=on_step)
    kill["thread"].join()
    assert kill.get("owed"), "worker 0 never received an order"
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # the learner kept going
    assert last["workers/restarts"] == 1
    # Each episode it owed either reached the buffer (written before it died) or is counted
    # lost: exactly once, none left running, and the books' lost count is exactly those.
    owed, lost, arrived = set(kill["owed"]), kill["lost_ids"], set(kill["owed"]) & set(kill["filed_ids"])
    assert len(set(lost)) == len(lost) and set(lost) | arrived == owed and not set(lost) & arrived
    assert last["buffer/lost"] - kill["lost_before"] == len(lost)
    still_running = {e for _, e in kill["coordinator"].buffer.outstanding_episodes()}
    assert not still_running & owed
    assert_records_consistent(records, config)
    for record in records:
        assert_rates_from_a_fresh_clock(record)
    assert sum(r["samples"] for r in records) == last["buffer/consumed"]
    assert records[-1]["policy_version"] == 4

    # Resume: the checkpoint at step 4 carries the learner and the buffer's books; what was
    # running then died with the old workers and is lost, exactly.
    books = saved_runs[4]["buffer"]
    assert books["accounting"]["consumed"] == last["buffer/consumed"]
    running_at_save = sum(len(group["outstanding"]) for group in books["groups"])
    config.total_steps = 6
    resumed = train(config, workdir)
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert resumed["policy_version"] == 6 and resumed["workers/restarts"] == 0
    assert_records_consistent(records[4:], config, previous=records[3])
    assert resumed["buffer/lost"] == books["accounting"]["lost"] + running_at_save
    assert resumed["buffer/consumed"] == sum(r["samples"] for r in records)


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
    # Lock-step: every sample was generated by the weights being trained, each round
    # dispatched exactly one batch and nothing is left over, lost or dropped.
    assert all(r["staleness_histogram"] == {"0": 8} for r in records)
    config = small_config(tmp_path, num_workers=1, total_steps=2)[0]
    assert_records_consistent(records, config)
    for step, record in enumerate(records, start=1):
        assert_rates_from_a_fresh_clock(record)
        assert (record["buffer/dispatched"], record["buffer/generated"], record["buffer/consumed"]) \
            == (8 * step, 8 * step, 8 * step)
        assert (record["buffer/lost"], record["buffer/running"], record["buffer/buffered"],
                record["buffer/dropped"], record["buffer/padded"]) == (0, 0, 0, 0, 0)
        assert record["workers/restarts"] == 0 and record["workers/ready"] == 1

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
        scored = result["episodes"] - result["crashed"]
        assert scored > 0 and result["reward/correct"] == pytest.approx(result["pass_rate"], abs=1e-12)
        passed = result["pass_rate"] * scored
        assert 0 <= round(passed) <= scored and passed == pytest.approx(round(passed), abs=1e-9)
        # One sample per task: the solved fraction counts the same passes over all tasks.
        assert result["tasks_solved_fraction"] == pytest.approx(round(passed) / result["tasks"])
        floor = config.reward.correct * result["reward/correct"] + \
            config.reward.fraction_passed * result["reward/fraction_passed"]
        lower_terms = config.reward.simplicity + config.reward.cleanliness + config.reward.feedback
        assert floor - 1e-9 <= result["reward"] <= floor + lower_terms * result["pass_rate"] + 1e-9


def test_orders_in_flight_is_checked_against_the_sampler(tmp_path):
    config, _ = small_config(tmp_path, **{"sampler.orders_in_flight": 2})
    with pytest.raises(ValueError, match="sampler.orders_in_flight=2 needs sampler.kind='continuous'"):
        validate(config)
    config, _ = small_config(tmp_path, **{"sampler.kind": "continuous", "sampler.orders_in_flight": 0})
    with pytest.raises(ValueError, match="sampler.orders_in_flight=0 must be >= 1"):
        validate(config)


def test_ray_backend_runs_the_same_experiment(tmp_path):
    """On Ray, with the continuous sampler and two orders in flight per worker: the actor's one
    message stream carries both orders' trajectories and reports."""
    pytest.importorskip("ray")
    config, _ = small_config(tmp_path, backend="ray", num_workers=1, total_steps=2,
                             checkpoint_every=0, ray_num_cpus=2,
                             **{"sampler.kind": "continuous", "sampler.orders_in_flight": 2})
    last = train(config, tmp_path / "ray")
    assert last["step"] == 2 and last["workers/ready"] == 1
    records = read_metrics(tmp_path / "ray")
    assert records[-1] == {key: last[key] for key in records[-1]}
    assert_records_consistent(records, config)
    assert last["buffer/consumed"] == sum(r["samples"] for r in records)
