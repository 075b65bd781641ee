"""The training loop end to end on a synthetic corpus: metrics and checkpoints, 8 simulated
devices against 1, restore onto a different mesh, and falling back from a damaged checkpoint.

One 1-device reference run (module fixture) is the yardstick for all of them; every other
run compiles the same programs, which the persistent compilation cache shares.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from glm5_jax.train.loop import train
from glm5_jax.train.metrics_writer import read_metrics
from glm5_jax.train.testing import TEST_TOTAL_STEPS as TOTAL_STEPS
from glm5_jax.train.testing import cpu_test_config, write_test_corpus

SHARDED_MESH = "fsdp=4,expert=2"
LOSS_FIELDS = ("loss", "ce_loss", "mtp_loss", "indexer_kl", "balance_loss", "grad_norm")
# The indexer KL is a difference of nearly equal cross entropies (~1e-5 out of ~3): float32
# reduction-order changes move it by ~1e-8 absolute, beyond 1e-4 relative. The losses
# themselves are held to 1e-4 relative.
ABSOLUTE_TOLERANCE = {"indexer_kl": 1e-7}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train_loop")
    return write_test_corpus(root / "corpus"), root / "data"


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """(config, workdir, metrics) of an uninterrupted 1-device run."""
    config = cpu_test_config(*corpus)
    workdir = tmp_path_factory.mktemp("reference")
    train(config, workdir, devices=jax.devices()[:1])
    return config, workdir, read_metrics(workdir)


def _losses(records, steps=None):
    return {r["step"]: {k: r[k] for k in LOSS_FIELDS} for r in records
            if steps is None or r["step"] in steps}


def _assert_close(actual, expected, rtol):
    assert actual.keys() == expected.keys()
    for step in expected:
        for field in LOSS_FIELDS:
            np.testing.assert_allclose(actual[step][field], expected[step][field], rtol=rtol,
                                       atol=ABSOLUTE_TOLERANCE.get(field, 0.0),
                                       err_msg=f"step {step} {field}")


def test_reference_run_logs_and_checkpoints(reference):
    _, workdir, metrics = reference
    assert [r["step"] for r in metrics] == list(range(1, TOTAL_STEPS + 1))
    for field in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "mfu",
                  "expert_load_max_over_mean", "indexer_recall", "skipped_steps"):
        assert all(np.isfinite(r[field]) for r in metrics), field
    assert metrics[-1]["ce_loss"] < metrics[0]["ce_loss"]
    assert all(r["skipped_steps"] == 0 for r in metrics)
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == list(range(2, TOTAL_STEPS + 1, 2))
    assert any((workdir / "tensorboard").iterdir())


def test_eight_devices_match_one(reference, tmp_path):
    config, _, expected = reference
    train(_with(config, mesh=SHARDED_MESH), tmp_path)
    _assert_close(_losses(read_metrics(tmp_path)), _losses(expected), rtol=1e-4)


def _with(config, **changes):
    config = config.copy_and_resolve_references()
    config.update(changes)
    return config


def _copy_checkpoint(source_workdir: Path, step: int, target_workdir: Path) -> None:
    (target_workdir / "checkpoints").mkdir(parents=True)
    shutil.copytree(source_workdir / "checkpoints" / str(step), target_workdir / "checkpoints" / str(step))


def test_restore_onto_another_mesh_and_back(reference, tmp_path):
    """Saved on 1 device at step 2; resumed on 8 (fsdp=4, expert=2) to step 4 and saved
    there; resumed on 1 device to the end. Losses follow the uninterrupted run (to float32
    reduction-order differences)."""
    config, ref_workdir, expected = reference
    _copy_checkpoint(ref_workdir, 2, tmp_path)
    eight = train(_with(config, mesh=SHARDED_MESH), tmp_path, stop_at_step=4)
    assert (eight.start_step, eight.end_step) == (2, 4)
    one = train(config, tmp_path, devices=jax.devices()[:1])
    assert (one.start_step, one.end_step) == (4, TOTAL_STEPS)
    resumed_steps = range(3, TOTAL_STEPS + 1)
    _assert_close(_losses(read_metrics(tmp_path)), _losses(expected, resumed_steps), rtol=1e-4)


def _garble(step_dir: Path) -> None:
    """Zero 32 bytes in the middle of every array data file of the saved state."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, sorted((step_dir / "state").rglob("*"))
    for path in files:
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 32] = bytes(32)
        path.write_bytes(bytes(data))


def _truncate(step_dir: Path) -> None:
    """Cut every file of the saved state to half its size."""
    for path in (step_dir / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_damaged_checkpoints_fall_back_to_the_last_good_one(reference, tmp_path, caplog):
    """The newest checkpoint garbled, the one before it truncated: both are reported and set
    aside, and the run resumes from the third newest."""
    config, ref_workdir, expected = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_workdir, workdir)
    _garble(workdir / "checkpoints" / str(TOTAL_STEPS))
    _truncate(workdir / "checkpoints" / str(TOTAL_STEPS - 2))
    with caplog.at_level(logging.WARNING):
        result = train(config, workdir, devices=jax.devices()[:1])
    assert result.start_step == TOTAL_STEPS - 4
    for step in (TOTAL_STEPS, TOTAL_STEPS - 2):
        assert any(f"checkpoint step {step} " in m and "falling back" in m for m in caplog.messages)
    assert len(list((workdir / "corrupt_checkpoints").iterdir())) == 2
    # The same program from the same restored bits: identical to the uninterrupted run.
    assert _losses(read_metrics(workdir)) == _losses(expected)


def test_finished_run_is_not_rerun(reference, tmp_path):
    config, ref_workdir, expected = reference
    shutil.copytree(ref_workdir, tmp_path / "run")
    result = train(config, tmp_path / "run", devices=jax.devices()[:1])
    assert (result.start_step, result.end_step, result.metrics) == (TOTAL_STEPS, TOTAL_STEPS, [])
    assert _losses(read_metrics(tmp_path / "run")) == _losses(expected)


def test_mesh_must_cover_the_devices(reference, tmp_path):
    config, _, _ = reference
    with pytest.raises(ValueError, match="product of the axis sizes must equal the device count"):
        train(_with(config, mesh="fsdp=4"), tmp_path)


def test_metrics_lines_are_json_objects(reference):
    _, workdir, _ = reference
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert isinstance(record, dict) and {"step", "loss", "learning_rate", "grad_norm",
                                             "tokens_per_second"} <= record.keys()
