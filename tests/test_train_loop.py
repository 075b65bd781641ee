"""The training loop end to end on a synthetic corpus: metrics and checkpoints, 8 simulated
devices against 1, exact resume after kill -9 (through the command line), restore onto a
different mesh and back, falling back from damaged checkpoints, not re-running a finished run.

All of it is one test on purpose: every part is measured against the same uninterrupted
runs, and CI spreads tests over xdist workers, which would otherwise each redo (and
recompile) them. On CPU compiling a train step costs far more than running it: in-process
runs reuse the two ``Run`` objects (one per mesh), and the command-line runs use the same
config and device count, so they load those programs from the persistent cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from glm5_jax.sample.checkpoint import load_tokenizer, load_train_workdir
from glm5_jax.train.loop import train
from glm5_jax.train.metrics_writer import read_metrics
from glm5_jax.train.run_setup import build_run
from glm5_jax.train.testing import REPO, cpu_test_config, write_test_corpus
from glm5_jax.train.testing import TEST_TOTAL_STEPS as TOTAL_STEPS

SHARDED_MESH = "fsdp=2,expert=2,tensor=2"
LOSS_FIELDS = ("loss", "ce_loss", "indexer_kl", "balance_loss", "grad_norm")
# The indexer KL is a difference of nearly equal cross entropies (~1e-5 out of ~3): float32
# reduction-order changes move it by ~1e-8 absolute, beyond 1e-4 relative. The losses
# themselves are held to 1e-4 relative.
ABSOLUTE_TOLERANCE = {"indexer_kl": 1e-7}
TIMING_FIELDS = {"tokens_per_second", "step_time", "mfu"}
EXPERIMENT = """
from glm5_jax.train.testing import cpu_test_config

def get_config():
    return cpu_test_config({corpus!r}, {data_dir!r}, mesh={mesh!r})
"""


def _losses(records, steps=None):
    return {r["step"]: {k: r[k] for k in LOSS_FIELDS} for r in records
            if steps is None or r["step"] in steps}


def _assert_close(actual, expected, rtol=1e-4):
    assert actual.keys() == expected.keys()
    for step in expected:
        for field in LOSS_FIELDS:
            np.testing.assert_allclose(actual[step][field], expected[step][field], rtol=rtol,
                                       atol=ABSOLUTE_TOLERANCE.get(field, 0.0),
                                       err_msg=f"step {step} {field}")


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def _saved_steps(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _command_line(corpus: tuple[Path, Path], mesh: str, workdir: Path) -> tuple[list[str], dict]:
    """``python -m glm5_jax.train`` on the test config (checkpoints every 3 steps, unlike the
    in-process runs: a host-side field, so the compiled programs are the same)."""
    experiment = workdir.parent / f"{workdir.name}_experiment.py"
    experiment.write_text(EXPERIMENT.format(corpus=str(corpus[0]), data_dir=str(corpus[1]), mesh=mesh))
    env = dict(os.environ)  # the tests' XLA_FLAGS: the same 8 simulated devices
    env["JAX_COMPILATION_CACHE_DIR"] = str(REPO / ".jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    args = [sys.executable, "-m", "glm5_jax.train", f"--config={experiment}",
            f"--workdir={workdir}", "--config.checkpoint_every=3"]
    return args, env


def _kill_after_first_checkpoint(args: list[str], env: dict, workdir: Path) -> None:
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not _saved_steps(workdir) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{stderr[-3000:]}"


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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train_loop")
    return write_test_corpus(root / "corpus"), root / "data"


def test_training_loop(corpus, tmp_path, caplog):
    config = cpu_test_config(*corpus)
    sharded_config = cpu_test_config(*corpus, mesh=SHARDED_MESH)
    one_device = build_run(config, jax.devices()[:1])
    eight_devices = build_run(sharded_config)

    # 1. The uninterrupted 1-device reference: metrics every step, checkpoints every 2.
    reference = tmp_path / "reference"
    train(config, reference, run=one_device)
    expected_records = read_metrics(reference)
    expected = _losses(expected_records)
    assert sorted(expected) == list(range(1, TOTAL_STEPS + 1))
    for field in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "mfu",
                  "expert_load_max_over_mean", "indexer_recall", "skipped_steps"):
        assert all(np.isfinite(r[field]) for r in expected_records), field
    assert all(r["skipped_steps"] == 0 for r in expected_records)
    assert expected_records[-1]["ce_loss"] < expected_records[0]["ce_loss"]
    assert _saved_steps(reference) == list(range(2, TOTAL_STEPS + 1, 2))
    assert any((reference / "tensorboard").iterdir())
    model, variables = load_train_workdir(str(reference))  # what generate / glm5-eval load
    assert model.config == one_device.model_config
    tokenizer = load_tokenizer(str(reference))
    assert max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1 == model.config.vocab_size
    final = train(config, reference, run=one_device).state  # finished: restores, trains nothing
    for loaded, trained in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(final.params)):
        np.testing.assert_array_equal(loaded, trained)
    for line in (reference / "metrics.jsonl").read_text().splitlines():
        assert {"step", "loss", "learning_rate", "grad_norm", "tokens_per_second"} <= json.loads(line).keys()

    # 2. 8 simulated devices, mesh fsdp=4 x expert=2: the same losses to 1e-4.
    sharded = tmp_path / "sharded"
    train(sharded_config, sharded, run=eight_devices)
    _assert_close(_losses(read_metrics(sharded)), expected)

    # 3. kill -9 after the first checkpoint, then the same command again: it resumes from the
    #    latest complete checkpoint and logs the uninterrupted run's losses bit for bit.
    killed = tmp_path / "killed"
    args, env = _command_line(corpus, SHARDED_MESH, killed)
    _kill_after_first_checkpoint(args, env, killed)
    logged_before_kill = [r["step"] for r in read_metrics(killed)]
    assert logged_before_kill and logged_before_kill[-1] < TOTAL_STEPS
    resumed = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from step" in resumed.stderr
    assert _without_timing(read_metrics(killed)) == _without_timing(read_metrics(sharded))

    # 4. Saved on 1 device (step 2), resumed on 8 to step 4 and saved there, resumed on 1.
    moved = tmp_path / "moved"
    (moved / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "2", moved / "checkpoints" / "2")
    result = train(sharded_config, moved, stop_at_step=4, run=eight_devices)
    assert (result.start_step, result.end_step) == (2, 4)
    result = train(config, moved, run=one_device)
    assert (result.start_step, result.end_step) == (4, TOTAL_STEPS)
    _assert_close(_losses(read_metrics(moved)), _losses(expected_records, range(3, TOTAL_STEPS + 1)))

    # 5. The newest checkpoint garbled and the one before it truncated: both are reported and
    #    set aside, and the run resumes from the third newest, bit for bit as before.
    damaged = tmp_path / "damaged"
    shutil.copytree(reference, damaged)
    _garble(damaged / "checkpoints" / str(TOTAL_STEPS))
    _truncate(damaged / "checkpoints" / str(TOTAL_STEPS - 2))
    with caplog.at_level(logging.WARNING, logger="glm5_jax.train"):
        result = train(config, damaged, run=one_device)
    assert result.start_step == TOTAL_STEPS - 4
    for step in (TOTAL_STEPS, TOTAL_STEPS - 2):
        assert any(f"checkpoint step {step} " in m and "falling back" in m for m in caplog.messages)
    assert len(list((damaged / "corrupt_checkpoints").iterdir())) == 2
    assert _losses(read_metrics(damaged)) == expected

    # 6. A finished run is not run again.
    result = train(config, reference, run=one_device)
    assert (result.start_step, result.end_step, result.metrics) == (TOTAL_STEPS, TOTAL_STEPS, [])
    assert _losses(read_metrics(reference)) == expected


def test_mesh_must_cover_the_devices(corpus, tmp_path):
    with pytest.raises(ValueError, match="product of the axis sizes must equal the device count"):
        train(cpu_test_config(*corpus, mesh="fsdp=4"), tmp_path)
