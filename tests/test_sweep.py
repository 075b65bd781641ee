"""The sweep runner: a grid of points, one workdir each, a table and a plot; a rerun skips
finished points; a failing point is recorded and the others go on. ``--job=rl`` points run RL
training and then its fixed evaluation, and their rows read that evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from glm5_jax.errors import UserError
from glm5_jax.sweep import runner
from glm5_jax.sweep.__main__ import parse
from glm5_jax.sweep.grid import grid, parse_axis, point_name
from glm5_jax.sweep.jobs import JOBS
from glm5_jax.sweep.results import markdown_table, point_row, write_results
from glm5_jax.train.testing import REPO, TEST_TOTAL_STEPS, write_test_corpus
from test_rl_end_to_end import small_config
from child_env import child_env

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
    env = child_env()  # one CPU device per point
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
    # log_every=0 is an invalid config and must fail alone; the other two points differ only
    # in logging, so they run one compiled train step (the second finds it in the cache).
    args = [f"--config={experiment}", f"--workdir={sweep_dir}", "--axis=log_every=1,2,0",
            f"--config.total_steps={TEST_TOTAL_STEPS // 4}", "--config.checkpoint_every=1"]
    first = _sweep(args)
    assert first.returncode == 1, first.stdout + first.stderr
    rows = {r["overrides"]["log_every"]: r for r in
            map(json.loads, (sweep_dir / "results.jsonl").read_text().splitlines())}
    assert rows["1"]["status"] == rows["2"]["status"] == "done"
    assert rows["1"]["steps"] == rows["2"]["steps"] == TEST_TOTAL_STEPS // 4
    assert rows["1"]["final_loss"] > 0 and rows["1"]["tokens_per_second"] > 0
    assert rows["0"]["status"] == "failed" and "log_every" in rows["0"]["error"]
    table = (sweep_dir / "results.md").read_text()
    assert "| log_every |" in table and "failed" in table
    assert (sweep_dir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = {n: (sweep_dir / "points" / f"log_every={n}" / "metrics.jsonl").read_text()
               for n in ("1", "2")}
    again = _sweep(args)
    assert again.returncode == 1
    assert again.stdout.count("done before: skipped") == 2
    for n, text in metrics.items():  # finished points were not run again
        assert (sweep_dir / "points" / f"log_every={n}" / "metrics.jsonl").read_text() == text


def test_unknown_override_in_an_axis_exits_2_naming_it(tmp_path):
    result = _sweep([f"--config={REPO / 'experiments' / 'tiny.py'}", f"--workdir={tmp_path}",
                     "--axis=model_overrides.nmu_layers=1,2"])
    assert result.returncode == 2
    assert "nmu_layers" in result.stderr and "Traceback" not in result.stderr


def test_unknown_job_exits_2_naming_the_allowed_jobs(tmp_path):
    result = _sweep([f"--config={REPO / 'experiments' / 'tiny.py'}", f"--workdir={tmp_path}",
                     "--job=rlhf", "--axis=learning_rate=1e-3"])
    assert result.returncode == 2
    assert "--job='rlhf'; allowed: ['train', 'rl']" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "points").exists()


@pytest.mark.parametrize("flags, message", [
    (["--job=rl", "--metric=ce_loss"], r"--metric='ce_loss' for --job=rl; allowed: \['eval_reward'"),
    (["--metric=eval_reward"], r"--metric='eval_reward' for --job=train; allowed: \['loss'"),
    (["--job=rl", "--launcher=slurm"], r"--job=rl runs \['glm5_jax.rl.evaluation'\] on this host"),
    (["--job=rl", "--workdir=gs://bucket/sweep"], r"must be a local directory"),
])
def test_job_and_metric_mismatches_are_refused(flags, message):
    with pytest.raises(UserError, match=message):
        parse(["--config=c.py", "--workdir=/tmp/x", *flags])


def test_each_job_has_its_default_metric_and_commands(tmp_path):
    assert parse(["--config=c.py", "--workdir=/tmp/x"])[0].metric == "ce_loss"
    assert parse(["--config=c.py", "--workdir=/tmp/x", "--job=rl"])[0].metric == "eval_reward"
    point = {"learning_rate": "1e-4", "seed": 3}
    train = runner.job_commands(JOBS["train"], "c.py", tmp_path, point, ["--config.total_steps=2"])
    rl = runner.job_commands(JOBS["rl"], "c.py", tmp_path, point, ["--config.total_steps=2"])
    tail = [f"--workdir={tmp_path}", "--config.total_steps=2", "--config.learning_rate=1e-4",
            "--config.seed=3"]
    assert train == [[sys.executable, "-m", "glm5_jax.train", "--config=c.py", *tail]]
    assert rl == [[sys.executable, "-m", "glm5_jax.rl", "--config=c.py", *tail],
                  [sys.executable, "-m", "glm5_jax.rl.evaluation", f"--workdir={tmp_path}"]]


def test_a_sweep_directory_keeps_one_job(tmp_path):
    runner.record_job(tmp_path, JOBS["rl"])
    runner.record_job(tmp_path, JOBS["rl"])
    assert json.loads((tmp_path / runner.SWEEP_FILE).read_text()) == {"job": "rl"}
    with pytest.raises(UserError, match="holds a --job=rl sweep"):
        runner.record_job(tmp_path, JOBS["train"])


def test_a_point_whose_evaluation_failed_reruns_only_the_evaluation(tmp_path, monkeypatch):
    trained, evaluate_ok = tmp_path / "trained.log", tmp_path / "evaluation_may_pass"

    def fake_commands(job, config_path, point_dir, point, shared):
        return [[sys.executable, "-c", f"open({str(trained)!r}, 'a').write('trained\\n')"],
                [sys.executable, "-c", f"import os, sys; print('scoring'); "
                                       f"sys.exit(0 if os.path.exists({str(evaluate_ok)!r}) else 3)"]]

    monkeypatch.setattr(runner, "job_commands", fake_commands)
    points = {"lr=1": {"learning_rate": "1"}}
    first = runner.run_sweep(tmp_path, points, "c.py", [], echo=lambda m: None, job=JOBS["rl"])
    assert first["lr=1"]["status"] == "failed" and first["lr=1"]["commands_done"] == 1
    assert first["lr=1"]["returncode"] == 3 and first["lr=1"]["error"] == "scoring"
    evaluate_ok.touch()
    echoed = []
    second = runner.run_sweep(tmp_path, points, "c.py", [], echo=echoed.append, job=JOBS["rl"])
    assert second["lr=1"] == {"status": "done"}
    assert trained.read_text() == "trained\n"  # training ran once
    assert sum(m.startswith("[lr=1] ") and "-c" in m for m in echoed) == 1
    assert (tmp_path / "points" / "lr=1" / "sweep.log").read_text() == "scoring\n"


def _write_rl_point(point_dir):
    """A fabricated RL point: 40 learner steps in 20 s, snapshots of steps 0, 20 and 40 scored
    on both splits (step 20's training split scored twice: the later score counts)."""
    point_dir.mkdir(parents=True)
    (point_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "wall_time": s / 2, "reward": 9.0, "buffer/consumed": 32 * s}) + "\n"
        for s in range(1, 41)))
    evaluations = [(0, "train", 0.40, 0.20), (0, "held_out", 0.30, 0.10), (20, "train", 0.10, 0.05),
                   (20, "held_out", 0.50, 0.25), (20, "train", 0.70, 0.35), (40, "train", 0.60, 0.30),
                   (40, "held_out", 0.45, 0.20)]
    (point_dir / "eval.jsonl").write_text("".join(
        json.dumps({"step": step, "split": split, "reward": reward, "pass_rate": pass_rate}) + "\n"
        for step, split, reward, pass_rate in evaluations))


def test_an_rl_row_reads_the_fixed_evaluation_not_the_training_draws(tmp_path):
    _write_rl_point(tmp_path / "points" / "learning_rate=1e-4")
    row = point_row("learning_rate=1e-4", {"learning_rate": "1e-4"}, {"status": "done"},
                    tmp_path / "points" / "learning_rate=1e-4", "rl")
    assert row["job"] == "rl" and row["status"] == "done" and row["steps"] == 40
    assert row["wall_time"] == 20.0 and row["samples"] == 1280 and row["steps_per_second"] == 2.0
    assert row["evaluated_steps"] == [0, 20, 40]
    assert (row["start_eval_reward"], row["final_eval_reward"], row["best_eval_reward"]) == (0.40, 0.60, 0.70)
    assert (row["start_eval_pass_rate"], row["final_eval_pass_rate"], row["best_eval_pass_rate"]) == \
        (0.20, 0.30, 0.35)
    assert (row["start_eval_held_out_reward"], row["final_eval_held_out_reward"],
            row["best_eval_held_out_reward"]) == (0.30, 0.45, 0.50)
    assert row["best_eval_held_out_pass_rate"] == 0.25
    assert not any(key.endswith("_loss") for key in row)
    table = markdown_table([row], "eval_held_out_reward", "rl")
    assert table.splitlines()[0] == ("| learning_rate | status | steps | wall s | start eval_held_out_reward "
                                     "| final eval_held_out_reward | best eval_held_out_reward | steps/s |")
    assert table.splitlines()[2] == "| 1e-4 | done | 40 | 20 | 0.3 | 0.45 | 0.5 | 2 |"
    write_results(tmp_path, [row], "eval_reward", "rl")
    assert json.loads((tmp_path / "results.jsonl").read_text()) == row
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rl_sweep_trains_evaluates_and_reruns_as_a_no_op(tmp_path):
    _, config_path = small_config(tmp_path, num_workers=1)
    sweep_dir = tmp_path / "sweep"
    args = [f"--config={config_path}", f"--workdir={sweep_dir}", "--job=rl", "--axis=learning_rate=1e-4",
            "--config.total_steps=2", "--config.eval.every=1", "--config.eval.samples_per_task=1",
            "--config.eval.batch_rows=8", "--config.eval.sandbox_workers=1"]
    first = _sweep(args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    point = sweep_dir / "points" / "learning_rate=1e-4"
    run_config = json.loads((point / "config.json").read_text())
    assert run_config["learning_rate"] == 1e-4 and run_config["total_steps"] == 2
    evaluations = [json.loads(line) for line in (point / "eval.jsonl").read_text().splitlines()]
    assert sorted((r["step"], r["split"]) for r in evaluations) == [
        (step, split) for step in (0, 1, 2) for split in ("held_out", "train")]
    assert all(r["samples_per_task"] == 1 for r in evaluations)
    (row,) = map(json.loads, (sweep_dir / "results.jsonl").read_text().splitlines())
    assert row["job"] == "rl" and row["status"] == "done" and row["steps"] == 2
    assert row["evaluated_steps"] == [0, 1, 2] and row["samples"] == 16
    train = {r["step"]: r["reward"] for r in evaluations if r["split"] == "train"}
    assert (row["start_eval_reward"], row["final_eval_reward"], row["best_eval_reward"]) == \
        (train[0], train[2], max(train.values()))
    assert 0.0 <= row["final_eval_pass_rate"] <= 1.0 and row["wall_time"] > 0
    assert "| learning_rate | status | steps | wall s | start eval_reward |" in \
        (sweep_dir / "results.md").read_text()
    assert json.loads((sweep_dir / "sweep.json").read_text()) == {"job": "rl"}

    again = _sweep(args)
    assert again.returncode == 0 and "done before: skipped" in again.stdout
    assert [json.loads(line) for line in (point / "eval.jsonl").read_text().splitlines()] == evaluations
