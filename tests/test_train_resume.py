"""Exact resume through the command line: a run killed with SIGKILL after a checkpoint and
started again with the same command produces, bit for bit, the losses of a run that was
never interrupted.

The runs use the tests' 8 simulated devices (inherited XLA_FLAGS) with the loop tests'
sharded mesh and config, so they load the programs those tests compiled from the
persistent cache instead of compiling their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from glm5_jax.train.metrics_writer import read_metrics
from glm5_jax.train.testing import TEST_TOTAL_STEPS as TOTAL_STEPS
from glm5_jax.train.testing import write_test_corpus

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_EVERY = 3
MESH = "fsdp=4,expert=2"
TIMING_FIELDS = {"tokens_per_second", "step_time", "mfu"}

EXPERIMENT = '''
from glm5_jax.train.testing import cpu_test_config

def get_config():
    return cpu_test_config({corpus!r}, {data_dir!r})
'''


@pytest.fixture(scope="module")
def command(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    corpus = write_test_corpus(root / "corpus")
    experiment = root / "experiment.py"
    experiment.write_text(EXPERIMENT.format(corpus=str(corpus), data_dir=str(root / "data")))

    def run_args(workdir: Path) -> list[str]:
        return [sys.executable, "-m", "glm5_jax.train", f"--config={experiment}",
                f"--workdir={workdir}", f"--config.mesh={MESH}",
                f"--config.checkpoint_every={CHECKPOINT_EVERY}", "--config.keep_checkpoints=3"]

    return run_args


def _environment() -> dict[str, str]:
    """The tests' environment (8 simulated devices) plus the tests' compilation cache."""
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(REPO / ".jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _run(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, check=False, cwd=REPO, env=_environment(), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _finished_checkpoints(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def test_kill_and_resume_is_bit_exact(command, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    _run(command(uninterrupted))
    expected = _without_timing(read_metrics(uninterrupted))
    assert [r["step"] for r in expected] == list(range(1, TOTAL_STEPS + 1))

    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed), cwd=REPO, env=_environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 900
    while not _finished_checkpoints(killed) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{stderr[-3000:]}"
    steps_before_kill = [r["step"] for r in read_metrics(killed)]
    assert steps_before_kill and steps_before_kill[-1] < TOTAL_STEPS

    resumed = _run(command(killed))
    assert "resumed from step" in resumed.stderr
    assert _without_timing(read_metrics(killed)) == expected
