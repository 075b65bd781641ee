"""A ``gs://`` workdir, corpus and tokenizer, on a fake GCS reachable only through etils.epath
(and orbax's TensorStore kvstore): see ``tests/fake_gcs.py``. In the current directory a file
named ``gs:`` makes ``open``/``os``/``pathlib`` on a ``gs://`` string fail, so each of these
tests fails if any file of the run is reached another way.

The training test runs the CPU-test job (``glm5_jax.train.testing``) in the bucket to step 4,
leaves a metrics line past its last checkpoint (a run that died there), resumes to the end,
then resumes again with the newest checkpoint garbled: every record, checkpoint and
TensorBoard event lands in the bucket, and the losses are those of the same job in a local
workdir, bit for bit.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from fake_gcs import fake_gcs

from glm5_jax.data.build_lock import build_lock_path, exclusive_build_lock
from glm5_jax.data.text_files import iter_text_documents
from glm5_jax.data.tokenizer import load_tokenizer as load_tokenizer_file
from glm5_jax.data.tokenizer import train_or_load_tokenizer
from glm5_jax.errors import UserError
from glm5_jax.paths import as_path
from glm5_jax.sample.checkpoint import load_tokenizer, load_train_workdir
from glm5_jax.sweep import runner
from glm5_jax.sweep.results import point_row, write_results
from glm5_jax.train.loop import train
from glm5_jax.train.metrics_writer import SUPERSEDED_METRICS_FILE, read_metrics
from glm5_jax.train.run_setup import build_run
from glm5_jax.train.testing import TEST_TOTAL_STEPS, cpu_test_config, write_test_corpus

WORKDIR = "gs://bucket/run"
LOSS_FIELDS = ("loss", "ce_loss", "indexer_kl", "balance_loss", "grad_norm", "learning_rate")


@pytest.fixture
def gcs(tmp_path, monkeypatch):
    (tmp_path / "gcs").mkdir()
    (tmp_path / "cwd").mkdir()
    with fake_gcs(tmp_path / "gcs", monkeypatch, cwd=tmp_path / "cwd") as backend:
        yield backend
    assert (tmp_path / "cwd" / "gs:").is_file()  # nothing went around epath
    assert sorted(p.name for p in (tmp_path / "cwd").iterdir()) == ["gs:"]


def _losses(records):
    return {r["step"]: {k: r[k] for k in LOSS_FIELDS} for r in records}


def _garble_state(step_dir: Path) -> None:
    """Zero 32 bytes in the middle of every array data file of a saved state."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        data = bytearray(path.read_bytes())
        data[len(data) // 2:len(data) // 2 + 32] = bytes(32)
        path.write_bytes(bytes(data))


def test_training_in_a_gs_workdir_lands_there_and_resumes(tmp_path, gcs, caplog):
    corpus = write_test_corpus(tmp_path / "corpus")
    local_config = cpu_test_config(corpus, tmp_path / "data")
    local_run = build_run(local_config, jax.devices()[:1])
    train(local_config, tmp_path / "reference", run=local_run)
    reference = _losses(read_metrics(tmp_path / "reference"))

    # The same documents and tokenizer in the bucket (the ArrayRecord data_dir stays local:
    # ArrayRecord reads buckets with its own GCS client, which the fake does not serve).
    bucket = gcs.root / "bucket"
    shutil.copytree(corpus, bucket / "corpus")
    shutil.copyfile(local_run.prepared.tokenizer_path, bucket / "tokenizer.json")
    config = cpu_test_config("gs://bucket/corpus", tmp_path / "data")
    config.data.tokenizer_path = "gs://bucket/tokenizer.json"
    run = build_run(config, jax.devices()[:1])

    result = train(config, WORKDIR, run=run, stop_at_step=4, experiment="tiny_gcs")
    assert (result.start_step, result.end_step) == (0, 4)
    workdir = bucket / "run"
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    assert (workdir / "checkpoints" / "4" / "commit_success.txt").is_file()  # orbax's GCS commit
    assert [r["step"] for r in read_metrics(WORKDIR)] == [1, 2, 3, 4]
    assert json.loads((workdir / "run_info.json").read_text())["experiment"] == "tiny_gcs"
    events = list((workdir / "tensorboard").iterdir())
    assert len(events) == 1 and b"ce_loss" in events[0].read_bytes()  # scalars, not just a header
    assert (workdir / "tokenizer.json").read_bytes() == (bucket / "tokenizer.json").read_bytes()
    assert json.loads((workdir / "model_config.json").read_text())["vocab_size"] == 320
    with pytest.raises(UserError, match="holds a run of experiment 'tiny_gcs'"):
        train(config, WORKDIR, run=run, experiment="another")

    # A run that died after logging step 5 but before checkpointing it: the resume moves the
    # line aside and continues from step 4.
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 5, "loss": 0.0}) + "\n")
    result = train(config, WORKDIR, run=run, experiment="tiny_gcs")
    assert (result.start_step, result.end_step) == (4, TEST_TOTAL_STEPS)
    assert _losses(read_metrics(WORKDIR)) == reference
    superseded = (workdir / SUPERSEDED_METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in superseded] == [5]
    assert len(json.loads((workdir / "run_info.json").read_text())["history"]) == 1

    # What glm5_jax.generate and glm5-eval load from the workdir.
    model, variables = load_train_workdir(WORKDIR)
    assert model.config == run.model_config
    for loaded, trained in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(result.state.params)):
        np.testing.assert_array_equal(loaded, trained)
    assert load_tokenizer(WORKDIR).to_str() == run.prepared.tokenizer.to_str()

    # A damaged newest checkpoint is set aside in the bucket; the run redoes its steps.
    _garble_state(workdir / "checkpoints" / str(TEST_TOTAL_STEPS))
    with caplog.at_level("WARNING", logger="glm5_jax.train"):
        result = train(config, WORKDIR, run=run, experiment="tiny_gcs")
    assert (result.start_step, result.end_step) == (TEST_TOTAL_STEPS - 2, TEST_TOTAL_STEPS)
    assert any("falling back" in message for message in caplog.messages)
    assert [p.name for p in (workdir / "corrupt_checkpoints").iterdir()] == [f"checkpoints_{TEST_TOTAL_STEPS}"]
    assert _losses(read_metrics(WORKDIR)) == reference


def test_a_tokenizer_is_trained_into_and_loaded_from_a_bucket(gcs):
    texts = ["def f(x):\n    return x + 1\n"] * 50
    trained = train_or_load_tokenizer("gs://bucket/data/tokenizer.json", 300, texts)
    assert (gcs.root / "bucket" / "data" / "tokenizer.json").is_file()
    assert load_tokenizer_file("gs://bucket/data/tokenizer.json").to_str() == trained.to_str()
    assert train_or_load_tokenizer("gs://bucket/data/tokenizer.json", 300).to_str() == trained.to_str()


def test_the_build_lock_of_a_gs_data_dir_is_a_local_file(gcs, tmp_path):
    lock = build_lock_path("gs://bucket/data")
    assert lock.is_absolute() and "gs:" not in lock.parts
    assert build_lock_path(tmp_path / "data") == tmp_path / "data" / ".glm5_data_build.lock"
    with exclusive_build_lock("gs://bucket/data"):
        assert lock.is_file()
    assert not (gcs.root / "bucket").exists()


def test_text_documents_are_read_from_a_bucket(gcs, tmp_path):
    local = write_test_corpus(tmp_path / "corpus")
    (local / "sub").mkdir()
    (local / "sub" / "notes.md").write_text("# notes\n")
    shutil.copytree(local, gcs.root / "bucket" / "corpus")
    from_bucket = list(iter_text_documents("gs://bucket/corpus"))
    assert from_bucket == list(iter_text_documents(local))
    assert any(d.path == "sub/notes.md" for d in from_bucket)


def test_a_sweep_in_a_bucket_records_and_skips_its_points(gcs, monkeypatch):
    def fake_commands(job, config_path, point_dir, point, shared):  # the point's output, not a run
        return [[sys.executable, "-c", f"print('done: {point_dir}')"]]

    monkeypatch.setattr(runner, "job_commands", fake_commands)
    directory = as_path("gs://bucket/sweep")
    points = {"lr=1": {"learning_rate": "1"}, "lr=2": {"learning_rate": "2"}}
    statuses = runner.run_sweep(directory, points, "unused.py", [], echo=lambda message: None)
    assert {status["status"] for status in statuses.values()} == {"done"}
    for name in points:
        point = gcs.root / "bucket" / "sweep" / "points" / name
        assert json.loads((point / runner.STATUS_FILE).read_text()) == {"status": "done"}
        assert (point / "sweep.log").read_text() == f"done: gs://bucket/sweep/points/{name}\n"
    skipped = []
    runner.run_sweep(directory, points, "unused.py", [], echo=skipped.append)
    assert skipped == [f"[{name}] done before: skipped" for name in points]
    rows = [point_row(name, points[name], {"status": "done"}, directory / "points" / name)
            for name in points]
    write_results(directory, rows, "ce_loss")
    for name in ("results.jsonl", "results.md", "results.png"):
        assert (gcs.root / "bucket" / "sweep" / name).stat().st_size > 0
