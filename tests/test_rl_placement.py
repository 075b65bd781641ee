"""Placement: which devices the learner's mesh and each rollout worker get.

* invalid placements are refused with the field and the allowed values;
* a worker's slot: simulated CPU devices through XLA_FLAGS (an inherited count replaced),
  the GPUs after the learner's through CUDA_VISIBLE_DEVICES (mapped through the learner's
  own), TPU chips, or Ray resource requests (Ray then sets visibility);
* the learner's devices are the first ``learner_devices`` of its process, its mesh laid over
  them;
* a lock-step run with a 4-device learner and 2 workers of 2 devices each trains, writes no
  weight file, records every process's devices in run_info.json and syncs the weights each
  step (the learner's log-prob of the rollout tokens matches the worker's to 1e-4).
"""

from __future__ import annotations

import json
import os
import threading

import jax
import numpy as np
import pytest

from glm5_jax.rl.loop import learner_mesh, train, validate
from glm5_jax.rl.placement import (PlacementError, cpu_list, learner_devices,
                                   learner_devices_beside_workers, pin_process, worker_slot)
from test_rl_end_to_end import assert_accounted, small_config
from child_env import child_env


@pytest.fixture
def config(tmp_path):
    return small_config(tmp_path)[0]


@pytest.mark.parametrize("field, value, message", [
    ("learner_platform", "cuda", r"placement.learner_platform='cuda'; allowed: \['', 'cpu', 'gpu', 'tpu'\]"),
    ("rollout_platform", "gpus", r"placement.rollout_platform='gpus'; allowed"),
    ("learner_devices", -1, r"placement.learner_devices=-1 must be >= 0"),
    ("rollout_devices_per_worker", 0, r"placement.rollout_devices_per_worker=0 must be >= 1"),
    ("rollout_mesh", "tensor=3", r"placement.rollout_mesh='tensor=3' does not fit "
                                 r"placement.rollout_devices_per_worker=1"),
])
def test_invalid_placements_name_the_field(config, field, value, message):
    config.placement[field] = value
    with pytest.raises(PlacementError, match=message):
        validate(config)


@pytest.mark.parametrize("value, message", [
    ("one", r"placement.rollout_cpus='one': write CPU ids as taskset -c does"),
    ("0-x", r"placement.rollout_cpus='0-x': write CPU ids"),
    ("4096", r"placement.rollout_cpus='4096': this host's CPUs are 0-"),
])
def test_invalid_cpu_lists_name_the_field(config, value, message):
    config.placement.rollout_cpus = value
    with pytest.raises(PlacementError, match=message):
        validate(config)


def test_cpu_lists_pin_the_learner_and_each_worker(config):
    config.placement.learner_cpus, config.placement.rollout_cpus = "0", "0,0-0"
    validate(config)
    assert cpu_list(config.placement, "learner_cpus") == (0,)
    slot = worker_slot(config, 0, "cpu", learner_local_devices=1)
    assert slot.cpus == (0,) and "cpus=0" in slot.describe()
    config.placement.rollout_cpus = ""
    assert worker_slot(config, 0, "cpu", learner_local_devices=1).cpus == ()


def test_pinning_restricts_every_thread_of_the_process():
    def pinned() -> None:
        pin_process((0,), "learner_cpus")
        started = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        started.start()
        started.join()
        seen.append(os.sched_getaffinity(0))

    seen: list = []
    pid = os.fork()
    if pid == 0:
        try:
            pinned()
            os._exit(0 if seen == [{0}, {0}] else 3)
        except BaseException:  # noqa: BLE001
            os._exit(2)
    assert os.waitpid(pid, 0)[1] == 0


def test_accelerator_workers_need_the_learner_to_leave_devices(config):
    config.placement.learner_platform, config.placement.rollout_platform = "gpu", ""
    with pytest.raises(PlacementError, match=r"placement.learner_devices=0 gives the learner every gpu"):
        validate(config)
    config.placement.learner_devices = 4
    validate(config)
    config.placement.learner_devices, config.placement.rollout_platform = 0, "cpu"
    validate(config)


def test_cpu_workers_get_their_own_simulated_devices(config, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    config.worker_xla_flags = "--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count=8"
    config.placement.rollout_devices_per_worker = 3
    slot = worker_slot(config, 1, "cpu", learner_local_devices=4)
    assert slot.env["XLA_FLAGS"] == ("--xla_cpu_multi_thread_eigen=false "
                                     "--xla_force_host_platform_device_count=3")
    assert (slot.platform, slot.device_count) == ("cpu", 3)
    assert "CUDA_VISIBLE_DEVICES" not in slot.env and slot.ray_options == {"num_cpus": 0.0}


def test_gpu_workers_take_the_gpus_after_the_learners(config, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,4,5,6,7,8,9")  # what the learner's process sees
    config.num_workers, config.placement.rollout_devices_per_worker = 3, 2
    slots = [worker_slot(config, w, "gpu", learner_local_devices=2) for w in range(3)]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["4,5", "6,7", "8,9"]
    config.num_workers = 4
    with pytest.raises(PlacementError, match=r"needs 10 gpu devices; this host has 8"):
        worker_slot(config, 3, "gpu", learner_local_devices=2)


def test_tpu_workers_get_their_chips(config):
    config.placement.rollout_devices_per_worker = 4
    slot = worker_slot(config, 1, "tpu", learner_local_devices=0)
    assert slot.env["TPU_VISIBLE_CHIPS"] == "4,5,6,7" and slot.env["TPU_PROCESS_BOUNDS"] == "1,1,1"


def test_ray_actors_ask_ray_for_their_devices(config):
    config.backend, config.placement.rollout_devices_per_worker = "ray", 2
    config.placement.rollout_cpus_per_worker = 1.5
    gpu = worker_slot(config, 0, "gpu", learner_local_devices=4)
    assert gpu.ray_options == {"num_cpus": 1.5, "num_gpus": 2.0} and "CUDA_VISIBLE_DEVICES" not in gpu.env
    tpu = worker_slot(config, 0, "tpu", learner_local_devices=4)
    assert tpu.ray_options == {"num_cpus": 1.5, "resources": {"TPU": 2.0}}


def test_workers_skip_only_the_learners_devices_of_their_own_platform(config):
    config.placement.learner_devices, config.mesh = 4, "fsdp=4"
    mesh = learner_mesh(config)
    assert learner_devices_beside_workers(config, mesh) == 4  # cpu learner, cpu workers
    config.placement.rollout_platform = "gpu"  # a cpu learner leaves every GPU to the workers
    assert learner_devices_beside_workers(config, mesh) == 0


def test_the_learner_mesh_covers_its_devices_only(config):
    config.placement.learner_devices, config.mesh = 4, "fsdp=2,tensor=2"
    assert [d.id for d in learner_devices(config)] == [0, 1, 2, 3]
    mesh = learner_mesh(config)
    assert sorted(d.id for d in mesh.devices.flat) == [0, 1, 2, 3] and dict(mesh.shape)["fsdp"] == 2
    config.mesh = "fsdp=8"
    with pytest.raises(ValueError, match=r"mesh='fsdp=8' over placement.learner_devices=4 \(4 devices\)"):
        learner_mesh(config)
    config.placement.learner_devices = 9
    with pytest.raises(PlacementError, match=r"placement.learner_devices=9 but the learner's processes have "
                                             r"8 cpu devices; allowed: 0..8"):
        learner_devices(config)
    config.placement.learner_devices, config.placement.learner_platform = 4, "gpu"
    with pytest.raises(PlacementError, match=r"placement.learner_platform='gpu' but this process's JAX runs on 'cpu'"):
        learner_devices(config)


def test_lock_step_run_on_placed_devices_syncs_weights_without_files(tmp_path):
    config, _ = small_config(tmp_path, num_workers=2, total_steps=2, checkpoint_every=0, mode="sync")
    config.placement.learner_devices, config.placement.rollout_devices_per_worker = 4, 2
    config.mesh = "fsdp=4"
    config.eval.every = 0
    workdir = tmp_path / "placed"
    last = train(config, workdir)
    assert last["step"] == 2

    files = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
    assert files == ["config.json", "metrics.jsonl", "run_info.json"]  # no weight file anywhere
    info = json.loads((workdir / "run_info.json").read_text())
    assert [d["id"] for d in info["learner"]["devices"]] == [0, 1, 2, 3]
    assert info["learner"]["mesh"]["fsdp"] == 4 and info["mesh"]["fsdp"] == 4
    workers = info["workers"]
    assert [w["worker_id"] for w in workers] == [0, 1] and len({w["pid"] for w in workers}) == 2
    for worker in workers:
        assert [d["id"] for d in worker["devices"]] == [0, 1]  # each its own process's 2 devices
        assert worker["mesh"]["tensor"] == 2 and worker["platform"] == "cpu"
        assert worker["assigned"] == "simulated_cpu_devices=2"
    assert info["weight_sync"]["streams"] == config.weight_sync.streams

    model_bytes = None
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        assert_accounted(record)
        assert record["staleness_histogram"] == {"0": 8}  # every sample from the weights it trains
        assert record["weight_sync/version"] == record["policy_version"] == record["step"]
        assert record["weight_sync/workers"] == 2 and record["weight_sync_seconds"] > 0
        model_bytes = model_bytes or record["weight_sync_bytes"] / 2
        assert record["weight_sync_bytes"] == 2 * model_bytes  # the model once per worker
        assert record["learner/logprob_mismatch"] <= 1e-4  # the workers sampled with these weights
    from glm5_jax.model import GLM5Model, abstract_variables
    from glm5_jax.rl.experiment_setup import make_tokenizer
    from glm5_jax.rl.policy import policy_model_config

    tokenizer = make_tokenizer(config)
    model = GLM5Model(policy_model_config(config, tokenizer.vocab_size, tokenizer.bos_id,
                                          tokenizer.eos_id, tokenizer.pad_id))
    shapes = abstract_variables(model)
    assert model_bytes == sum(int(np.prod(x.shape)) * x.dtype.itemsize
                              for x in jax.tree.leaves({"params": shapes["params"],
                                                        "routing": shapes.get("routing", {})}))


def test_a_learner_of_two_processes_shares_batches_and_sends_its_own_shards(tmp_path):
    """``launch/local.py`` runs the learner as 2 processes x 2 CPU devices (fsdp=4 across them);
    process 0 runs the worker (2 devices, tensor=2) and shares each batch; each process streams
    only its shards, which together are the model once; the lock-step worker samples with the
    weights being trained; the eval snapshots are gathered whole."""
    import os
    import subprocess
    import sys

    from flax import serialization

    from test_rl_end_to_end import REPO

    _, config_path = small_config(tmp_path)
    workdir = tmp_path / "two"
    env = child_env()  # devices come from the launcher
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    completed = subprocess.run(
        [sys.executable, "launch/local.py", "--num_processes=2", "--devices_per_process=2",
         f"--workdir={workdir}", "--grace_seconds=5", "--", sys.executable, "-m", "glm5_jax.rl",
         f"--config={config_path}", f"--workdir={workdir}", "--config.mesh=fsdp=4", "--config.num_workers=1",
         "--config.placement.rollout_devices_per_worker=2", "--config.mode=sync", "--config.total_steps=2",
         "--config.checkpoint_every=2", "--config.eval.every=1", "--config.eval.batch_rows=8"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]

    info = json.loads((workdir / "run_info.json").read_text())
    assert info["process_count"] == 2 and len(info["weight_sync"]["addresses"]) == 2
    assert sorted({d["process_index"] for d in info["learner"]["devices"]}) == [0, 1]
    assert len(info["learner"]["devices"]) == 4 and info["learner"]["mesh"]["fsdp"] == 4
    [worker] = info["workers"]
    assert len(worker["devices"]) == 2 and worker["mesh"]["tensor"] == 2

    from glm5_jax.model import GLM5Model, abstract_variables
    from glm5_jax.rl.experiment_setup import make_tokenizer
    from glm5_jax.rl.policy import policy_model_config

    config = small_config(tmp_path)[0]
    tokenizer = make_tokenizer(config)
    shapes = abstract_variables(GLM5Model(policy_model_config(config, tokenizer.vocab_size, tokenizer.bos_id,
                                                              tokenizer.eos_id, tokenizer.pad_id)))
    shapes = {"params": shapes["params"], "routing": shapes.get("routing", {})}
    model_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert_accounted(record)
        assert record["staleness_histogram"] == {"0": 8}
        assert record["learner/logprob_mismatch"] <= 1e-4
        assert record["weight_sync_bytes"] == model_bytes  # one worker: the model once, in total
        by_process = record["weight_sync/bytes_by_process"]
        assert len(by_process) == 2 and all(0 < b < model_bytes for b in by_process)
    for step in (0, 1, 2):
        snapshot = serialization.msgpack_restore((workdir / "eval_snapshots" / f"step_{step}.msgpack").read_bytes())
        assert jax.tree.map(np.shape, snapshot) == jax.tree.map(lambda x: x.shape, shapes)
