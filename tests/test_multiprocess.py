"""Real multi-process JAX jobs through ``launch/local.py``: 2 processes x 4 CPU devices.

* the job equals a 1 x 8 run on the same mesh, loss for loss, for a mesh split across the
  processes along a batch axis (fsdp) and for one split along the expert axis (the MoE's
  all-to-all crosses processes);
* SIGTERM to the job checkpoints at a step boundary and exits 0; SIGKILL of one process ends
  the whole job within a minute with a non-zero exit; rerunning the same command after each
  continues, and the pieces together equal the uninterrupted job bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from glm5_jax.train.loop import train
from glm5_jax.train.metrics_writer import read_metrics
from glm5_jax.train.process_data import BatchLayoutError, process_region
from glm5_jax.train.testing import REPO, TEST_TOTAL_STEPS, cpu_test_config, write_test_corpus
from child_env import child_env

BATCH_SPLIT = "fsdp=4,tensor=2"  # process 0 holds fsdp shards 0-1, process 1 shards 2-3
EXPERT_SPLIT = "expert=4,tensor=2"  # process 0 holds experts 0-1, process 1 experts 2-3
LOSS_FIELDS = ("loss", "ce_loss", "balance_loss", "grad_norm")
EXPERIMENT = """
from glm5_jax.train.testing import cpu_test_config

def get_config():
    return cpu_test_config({corpus!r}, {data_dir!r}, mesh={mesh!r})
"""
DEATH_NOTICE_SECONDS = 60


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("multiprocess")
    return write_test_corpus(root / "corpus"), root / "data"


def _job(corpus, mesh: str, workdir: Path) -> tuple[list[str], dict]:
    experiment = workdir.parent / f"{workdir.name}_experiment.py"
    experiment.write_text(EXPERIMENT.format(corpus=str(corpus[0]), data_dir=str(corpus[1]), mesh=mesh))
    env = child_env()  # devices come from the launcher
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    args = [sys.executable, str(REPO / "launch" / "local.py"), "--num_processes=2",
            "--devices_per_process=4", f"--workdir={workdir}", "--grace_seconds=5", "--",
            sys.executable, "-m", "glm5_jax.train", f"--config={experiment}", f"--workdir={workdir}"]
    return args, env


def _losses(workdir: Path) -> dict[int, dict[str, float]]:
    return {r["step"]: {k: r[k] for k in LOSS_FIELDS} for r in read_metrics(workdir)}


def _saved_steps(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def _run(args, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _start(args, env) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(job: subprocess.Popen, workdir: Path, at_least: int) -> None:
    deadline = time.monotonic() + 600
    while max(_saved_steps(workdir), default=0) < at_least and job.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.05)
    assert job.poll() is None, f"the job ended before step {at_least}:\n{job.communicate()[1][-3000:]}"


def _reference(corpus, mesh: str, workdir: Path) -> dict:
    """The same experiment in this process, on its 8 simulated devices."""
    train(cpu_test_config(*corpus, mesh=mesh), workdir)
    return _losses(workdir)


def _assert_close(actual: dict, expected: dict) -> None:
    """Two processes reduce over gloo in another order than one process over its devices:
    float32 sums of the same terms, so the losses agree to float32 rounding (as 1 vs 8
    devices do in tests/test_train_loop.py)."""
    assert actual.keys() == expected.keys() == set(range(1, TEST_TOTAL_STEPS + 1))
    for step in expected:
        for field in LOSS_FIELDS:
            np.testing.assert_allclose(actual[step][field], expected[step][field], rtol=1e-4,
                                       err_msg=f"step {step} {field}")


def test_two_processes_equal_one_along_the_expert_axis(corpus, tmp_path):
    args, env = _job(corpus, EXPERT_SPLIT, tmp_path / "job")
    done = _run(args, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[0] done: step" in done.stdout and "[1] " in done.stdout
    info = (tmp_path / "job" / "run_info.json").read_text()
    assert '"process_count": 2' in info and '"device_count": 8' in info
    _assert_close(_losses(tmp_path / "job"), _reference(corpus, EXPERT_SPLIT, tmp_path / "reference"))


def test_preempted_and_killed_jobs_resume_bit_for_bit(corpus, tmp_path):
    args, env = _job(corpus, BATCH_SPLIT, tmp_path / "whole")
    whole = _run(args, env)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    expected = _losses(tmp_path / "whole")
    _assert_close(expected, _reference(corpus, BATCH_SPLIT, tmp_path / "reference"))

    workdir = tmp_path / "interrupted"
    args, env = _job(corpus, BATCH_SPLIT, workdir)
    # 1. SIGTERM (a preemption notice) to the job after its first checkpoint: every process
    #    stops at the same step boundary, after a checkpoint there, and the job exits 0.
    job = _start(args, env)
    _wait_for_checkpoint(job, workdir, 2)
    job.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, out[-3000:] + err[-3000:]
    assert "[0] preempted: checkpoint saved at step" in out
    preempted_at = max(_saved_steps(workdir))
    assert preempted_at < TEST_TOTAL_STEPS and max(_losses(workdir)) == preempted_at

    # 2. The same command; process 1 SIGKILLed after the next checkpoint: the job ends
    #    within a minute with a non-zero exit and says which process died.
    job = _start(args, env)
    _wait_for_checkpoint(job, workdir, preempted_at + 1)
    victim = _child_pids(job.pid)[1]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    out, err = job.communicate(timeout=DEATH_NOTICE_SECONDS + 30)
    assert time.monotonic() - killed_at < DEATH_NOTICE_SECONDS
    assert job.returncode != 0
    assert "process 1 was killed by SIGKILL" in err

    # 3. The same command again finishes the run: the three pieces are the whole job.
    resumed = _run(args, env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert _losses(workdir) == expected


def _child_pids(launcher_pid: int) -> list[int]:
    """The launcher's processes, in process-index order (it starts them in order)."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    return sorted(int(pid) for pid in children)


class _FakeSharding:
    """What process_region reads of a sharding: this process's devices' index slices."""

    def __init__(self, indices):
        self._indices = indices

    def addressable_devices_indices_map(self, shape):
        return dict(enumerate(self._indices))


def test_process_region_groups_processes_holding_the_same_rows():
    rows = lambda a, b: (slice(a, b), slice(None))  # noqa: E731
    # tensor crossing processes: both processes hold all 8 rows -> one group, read by both
    region = process_region(_FakeSharding([rows(0, 4), rows(4, 8)] * 2), (8, 32))
    assert (region.rows, region.group, region.groups) == (slice(0, 8), 0, 1)
    # the second half of the rows, split over 2 devices: group 1 of 2
    region = process_region(_FakeSharding([rows(4, 6), rows(6, 8)]), (8, 32))
    assert (region.rows, region.group, region.groups) == (slice(4, 8), 1, 2)
    # context crossing processes: the same rows, half the columns each
    region = process_region(_FakeSharding([(slice(0, 8), slice(16, 32))]), (8, 32))
    assert (region.columns, region.groups) == (slice(16, 32), 1)
    np.testing.assert_array_equal(region.take(np.arange(64).reshape(2, 32)),
                                  np.arange(64).reshape(2, 32)[:, 16:])
    with pytest.raises(BatchLayoutError, match="not one contiguous block"):
        process_region(_FakeSharding([rows(0, 2), rows(4, 6)]), (8, 32))


def test_a_lone_process_sees_its_whole_batch():
    mesh = jax.make_mesh((8,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    region = process_region(sharding, (16, 4))
    assert (region.rows, region.columns, region.group, region.groups) == (slice(0, 16), slice(0, 4), 0, 1)
