"""What a failed restore may touch (``glm5_jax/train/checkpointing.py``): a checkpoint the
config does not fit is refused with nothing moved and no metrics line lost; a transient read
error is retried, and refused when it persists; only a step proven corrupt is set aside.

The workdirs are written with ``Checkpointer.save`` from the CPU-test model's initial state
(one cheap init program, shared by every test), never by training: a refused restore raises
before any train step is compiled, and a resume with ``stop_at_step`` at the restored step
runs none.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm5_jax.data.pipeline import make_train_iterator
from glm5_jax.sharding import activate
from glm5_jax.train.checkpointing import (
    CORRUPT_DIR,
    Checkpointer,
    CheckpointIncompatibleError,
    CheckpointUnavailableError,
)
from glm5_jax.train.loop import train
from glm5_jax.train.metrics_writer import (
    METRICS_FILE,
    SUPERSEDED_METRICS_FILE,
    MetricsWriter,
    read_metrics,
)
from glm5_jax.train.run_setup import Run, build_run
from glm5_jax.train.testing import cpu_test_config, write_test_corpus
from glm5_jax.train.train_state import TrainState

STEPS = (2, 4)


@dataclasses.dataclass
class Setup:
    corpus: tuple[Path, Path]
    config: object
    run: Run  # adamw, one device
    state: TrainState  # its initial state


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    root = tmp_path_factory.mktemp("checkpoint_rules")
    corpus = (write_test_corpus(root / "corpus"), root / "data")
    config = cpu_test_config(*corpus)
    run = build_run(config, jax.devices()[:1])
    with activate(run.mesh):
        state = run.init_state()
    return Setup(corpus, config, run, state)


def _state_at(setup: Setup, step: int) -> TrainState:
    """The initial state as if ``step`` updates had been applied (the step counter and one
    parameter differ per step, so which step was restored shows)."""
    params = dict(setup.state.params)
    params["embed_tokens"] = setup.state.params["embed_tokens"] + step
    return setup.state.replace(step=jax.device_put(jnp.asarray(step, jnp.int32), setup.run.shardings.step),
                               params=params)


def _checkpointer(workdir: Path, **options) -> Checkpointer:
    return Checkpointer(workdir / "checkpoints", keep=10, async_save=False, **options)


def _workdir(setup: Setup, workdir: Path) -> Path:
    """Checkpoints at STEPS, a metrics line per step up to the last, TensorBoard events."""
    checkpoints = _checkpointer(workdir)
    iterator = make_train_iterator(setup.run.data_config, setup.run.prepared)
    for step in STEPS:
        next(iterator)
        checkpoints.save(step, _state_at(setup, step), iterator)
    checkpoints.close()
    writer = MetricsWriter(workdir, 0, max(STEPS), progress_bar=False)
    for step in range(1, max(STEPS) + 1):
        writer.write(step, {"loss": 5.0 - step / 10, "learning_rate": 1e-3})
    writer.close()
    return workdir


def _snapshot(workdir: Path) -> dict[str, bytes]:
    """Every file of the checkpoints, metrics.jsonl and TensorBoard, with its contents."""
    files = {}
    for top in ("checkpoints", "tensorboard", CORRUPT_DIR, METRICS_FILE, SUPERSEDED_METRICS_FILE):
        path = workdir / top
        for file in ([path] if path.is_file() else sorted(path.rglob("*")) if path.exists() else []):
            if file.is_file():
                files[str(file.relative_to(workdir))] = file.read_bytes()
    return files


def _steps_left(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _flip_a_byte(step_dir: Path) -> None:
    """Invert one byte in the middle of every array data file of the step's state."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, sorted((step_dir / "state").rglob("*"))
    for path in files:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def test_another_optimizer_is_refused_and_nothing_moves(setup, tmp_path):
    """--config.optimizer=muon on an adamw workdir: one line naming what differs and what to
    do; every checkpoint file, metrics line and TensorBoard event stays as it was."""
    workdir = _workdir(setup, tmp_path / "run")
    before = _snapshot(workdir)
    muon_config = cpu_test_config(*setup.corpus, optimizer="muon")
    muon = build_run(muon_config, jax.devices()[:1])
    with pytest.raises(CheckpointIncompatibleError) as refused:
        train(muon_config, workdir, run=muon)
    message = str(refused.value)
    assert "\n" not in message
    assert f"checkpoint step {max(STEPS)} " in message
    assert "only in the checkpoint" in message and "only in this config" in message
    assert "muon/" in message or "_muon" in message  # names a leaf that only Muon has
    assert "rerun with the config that wrote this workdir" in message and "--workdir" in message
    assert _snapshot(workdir) == before
    assert _steps_left(workdir) == list(STEPS) and not (workdir / CORRUPT_DIR).exists()
    assert [r["step"] for r in read_metrics(workdir)] == list(range(1, max(STEPS) + 1))


def test_another_param_dtype_is_refused_with_the_leaf_named(setup, tmp_path):
    """orbax would restore float32 arrays into bfloat16 by casting (and the fingerprint would
    then call a good checkpoint corrupt): the metadata check refuses first."""
    workdir = _workdir(setup, tmp_path / "run")
    before = _snapshot(workdir)
    bf16 = build_run(cpu_test_config(*setup.corpus, param_dtype="bfloat16"), jax.devices()[:1])
    iterator = make_train_iterator(bf16.data_config, bf16.prepared)
    with pytest.raises(CheckpointIncompatibleError,
                       match=r"leaves differ \(params/\S+: saved float32\[[\d, ]+\], "
                             r"expected bfloat16\[[\d, ]+\]"):
        _checkpointer(workdir).restore_latest(bf16.abstract_state, iterator)
    assert _snapshot(workdir) == before


def test_a_flipped_byte_sets_aside_the_newest_step_only(setup, tmp_path, caplog):
    workdir = _workdir(setup, tmp_path / "run")
    _flip_a_byte(workdir / "checkpoints" / str(max(STEPS)))
    with caplog.at_level(logging.WARNING, logger="glm5_jax.train"):
        result = train(setup.config, workdir, run=setup.run, stop_at_step=min(STEPS))
    assert result.start_step == min(STEPS) and int(result.state.step) == min(STEPS)
    np.testing.assert_array_equal(result.state.params["embed_tokens"],
                                  _state_at(setup, min(STEPS)).params["embed_tokens"])
    assert _steps_left(workdir) == [min(STEPS)]
    assert [p.name for p in (workdir / CORRUPT_DIR).iterdir()] == [f"checkpoints_{max(STEPS)}"]
    assert any(f"checkpoint step {max(STEPS)} " in m and "falling back" in m for m in caplog.messages)
    # The metrics of the steps after the restored one leave metrics.jsonl, but are kept.
    assert [r["step"] for r in read_metrics(workdir)] == list(range(1, min(STEPS) + 1))
    superseded = [json.loads(line)["step"]
                  for line in (workdir / SUPERSEDED_METRICS_FILE).read_text().splitlines()]
    assert superseded == list(range(min(STEPS) + 1, max(STEPS) + 1))


@pytest.mark.parametrize("error", [OSError(5, "Input/output error (injected)"),
                                   ValueError("UNAVAILABLE: connection reset (injected)")],
                         ids=["OSError", "tensorstore-UNAVAILABLE"])
def test_a_transient_read_error_is_retried(setup, tmp_path, monkeypatch, error):
    workdir = _workdir(setup, tmp_path / "run")
    before = _snapshot(workdir)
    messages = []
    checkpoints = _checkpointer(workdir, read_attempts=3, retry_backoff_s=0.001, log=messages.append)
    restore, calls = checkpoints.manager.restore, []

    def fails_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise error
        return restore(*args, **kwargs)

    monkeypatch.setattr(checkpoints.manager, "restore", fails_once)
    iterator = make_train_iterator(setup.run.data_config, setup.run.prepared)
    with activate(setup.run.mesh):
        restored, step = checkpoints.restore_latest(setup.run.abstract_state, iterator)
    assert step == max(STEPS) and int(restored.step) == max(STEPS) and len(calls) == 2
    assert any("retrying" in m for m in messages), messages
    assert _snapshot(workdir) == before


def test_a_persistent_read_error_refuses_and_moves_nothing(setup, tmp_path, monkeypatch):
    workdir = _workdir(setup, tmp_path / "run")
    before = _snapshot(workdir)
    checkpoints = _checkpointer(workdir, read_attempts=3, retry_backoff_s=0.001, log=lambda m: None)
    calls = []

    def always_fails(*args, **kwargs):
        calls.append(args)
        raise OSError(5, "Input/output error (injected)")

    monkeypatch.setattr(checkpoints.manager, "restore", always_fails)
    iterator = make_train_iterator(setup.run.data_config, setup.run.prepared)
    with activate(setup.run.mesh), pytest.raises(CheckpointUnavailableError,
                                                 match="failed 3 times.*nothing was moved"):
        checkpoints.restore_latest(setup.run.abstract_state, iterator)
    assert len(calls) == 3  # the newest step only: no fall back to an older one
    assert _snapshot(workdir) == before
    assert not (workdir / CORRUPT_DIR).exists()


def _as_saved_by_two_processes(step_dir: Path, split) -> None:
    """Rewrite a one-process step's data position as two processes would have saved it:
    ``split(position)`` -> (process 0's position, process 1's)."""
    data = step_dir / "data"
    position = json.loads((data / "process_0-of-1.json").read_text())
    (data / "process_0-of-1.json").unlink()
    for index, part in enumerate(split(position)):
        (data / f"process_{index}-of-2.json").write_text(json.dumps(part))


def _batches_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_position_saved_by_two_processes_restores_on_one(setup, tmp_path):
    """data.num_streams=2: process 0 read stream 0, process 1 stream 1; one process reading
    both resumes with the batch the two would have drawn next. And a plain one-stream
    position that both processes held (half the rows each) restores onto the plain iterator."""
    config = cpu_test_config(*setup.corpus)
    config.data.num_streams = 2
    run = build_run(config, jax.devices()[:1])
    iterator = run.make_iterator()
    assert "streams" in iterator.get_state()
    for _ in range(2):
        next(iterator)
    checkpoints = _checkpointer(tmp_path / "streams")
    checkpoints.save(2, _state_at(setup, 2), iterator)
    checkpoints.close()
    expected = next(iterator)
    _as_saved_by_two_processes(tmp_path / "streams" / "checkpoints" / "2",
                               lambda p: [{"streams": {"0": p["streams"]["0"]}},
                                          {"streams": {"1": p["streams"]["1"]}}])
    resumed = run.make_iterator()
    with activate(run.mesh):
        _, step = _checkpointer(tmp_path / "streams").restore_latest(run.abstract_state, resumed)
    assert step == 2 and _batches_equal(next(resumed), expected)

    workdir = _workdir(setup, tmp_path / "plain")  # the plain iterator: stream "0"
    _as_saved_by_two_processes(workdir / "checkpoints" / str(max(STEPS)),
                               lambda p: [{"streams": {"0": p}}] * 2)
    reference = make_train_iterator(setup.run.data_config, setup.run.prepared)
    for _ in range(len(STEPS)):
        next(reference)
    resumed = make_train_iterator(setup.run.data_config, setup.run.prepared)
    with activate(setup.run.mesh):
        _, step = _checkpointer(workdir).restore_latest(setup.run.abstract_state, resumed)
    assert step == max(STEPS) and _batches_equal(next(resumed), next(reference))


def test_data_positions_that_do_not_fit_are_refused_or_set_aside(setup, tmp_path):
    """Streams this run does not read (data.num_streams changed): refused, nothing moved.
    Two processes that disagree about one stream's position: that step is corrupt."""
    workdir = _workdir(setup, tmp_path / "run")
    newest = workdir / "checkpoints" / str(max(STEPS))
    _as_saved_by_two_processes(newest, lambda p: [{"streams": {"0": p}}, {"streams": {"1": p}}])
    before = _snapshot(workdir)
    iterator = make_train_iterator(setup.run.data_config, setup.run.prepared)
    with pytest.raises(CheckpointIncompatibleError,
                       match=r"data streams \['0', '1'\] \(saved by 2 processes\); this process "
                             r"reads streams \['0'\]: data.num_streams"):
        _checkpointer(workdir).restore_latest(setup.run.abstract_state, iterator)
    assert _snapshot(workdir) == before

    (newest / "data" / "process_1-of-2.json").write_text(
        json.dumps({"streams": {"0": {"disagrees": True}}}))
    with activate(setup.run.mesh):
        _, step = _checkpointer(workdir, log=lambda m: None).restore_latest(setup.run.abstract_state, iterator)
    assert step == min(STEPS) and _steps_left(workdir) == [min(STEPS)]
    assert [p.name for p in (workdir / CORRUPT_DIR).iterdir()] == [f"checkpoints_{max(STEPS)}"]


def test_undecodable_metadata_is_damage_only_beside_a_readable_step(setup, tmp_path):
    """A step whose metadata does not decode is set aside once an older step's metadata reads;
    when no step's does (another orbax format?), nothing is moved and the restore is refused."""
    workdir = _workdir(setup, tmp_path / "run")

    def cut(step: int) -> None:
        path = workdir / "checkpoints" / str(step) / "state" / "_METADATA"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    cut(max(STEPS))
    iterator = make_train_iterator(setup.run.data_config, setup.run.prepared)
    with activate(setup.run.mesh):
        _, step = _checkpointer(workdir, log=lambda m: None).restore_latest(
            setup.run.abstract_state, iterator)
    assert step == min(STEPS) and _steps_left(workdir) == [min(STEPS)]

    cut(min(STEPS))
    before = _snapshot(workdir)
    with activate(setup.run.mesh), pytest.raises(CheckpointUnavailableError, match="nothing was moved"):
        _checkpointer(workdir).restore_latest(setup.run.abstract_state, iterator)
    assert _snapshot(workdir) == before


def test_every_step_corrupt_starts_fresh_and_says_so(setup, tmp_path):
    """Every step restores to other bits than were saved (the saved fingerprint altered: the
    same verdict as a flipped byte, without TensorStore failures in background threads, whose
    tracebacks CPython 3.11.7 formats racily)."""
    workdir = _workdir(setup, tmp_path / "run")
    for step in STEPS:
        meta_file = workdir / "checkpoints" / str(step) / "meta" / "metadata"
        meta = json.loads(meta_file.read_text())
        meta["fingerprint"][0][0] ^= 1
        meta_file.write_text(json.dumps(meta))
    messages = []
    iterator = make_train_iterator(setup.run.data_config, setup.run.prepared)
    with activate(setup.run.mesh):
        assert _checkpointer(workdir, log=messages.append).restore_latest(
            setup.run.abstract_state, iterator) is None
    assert _steps_left(workdir) == []
    assert len(list((workdir / CORRUPT_DIR).iterdir())) == len(STEPS)
    assert "starting from step 0" in messages[-1]
