"""Which devices the learner's mesh uses and which devices each rollout worker gets.

``config.placement``:

* ``learner_platform``: ``""`` (JAX's default: tpu, else gpu, else cpu) or a platform name;
* ``learner_devices``: the devices ``config.mesh`` is laid over (0: every device of the
  learner's processes), the same number taken from each learner process;
* ``rollout_platform``: ``""`` (the learner's) or a platform name;
* ``rollout_devices_per_worker``: the devices of one worker, over which it lays
  ``rollout_mesh`` (``""``: ``tensor`` over all of them) and assembles the weights it receives;
* ``rollout_cpus_per_worker``: what a Ray actor asks Ray for in CPUs (scheduling only);
* ``learner_cpus`` / ``rollout_cpus`` (optional; ``""``: no change): the host CPUs the
  learner's process / every rollout worker's process (and the sandboxes it starts) may run
  on, as ``taskset -c`` writes them (``"0"``, ``"1-3"``, ``"0,2"``). Set before JAX starts,
  so XLA sizes its CPU thread pool to them. With ``learner_cpus="0"``, ``rollout_cpus="1"``
  generation and training each own one core: what separate devices would give.

A worker is its own JAX process, so it is given its devices before its JAX starts:

* **cpu**: that many simulated devices (``--xla_force_host_platform_device_count``);
* **gpu**: ``CUDA_VISIBLE_DEVICES`` = the host's GPUs after the learner's (local processes),
  or ``num_gpus`` in the Ray actor's request (Ray then sets ``CUDA_VISIBLE_DEVICES``);
* **tpu**: ``TPU_VISIBLE_CHIPS`` (and one-process bounds) = the chips after the learner's, or
  ``resources={"TPU": k}`` for a Ray actor. (Written from libtpu's documented variables; not
  run here: this host has no TPU.)

The learner's own process restricts itself to its accelerators the same way before its JAX
starts (``restrict_learner_process``), so worker processes on the same host find theirs free.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
from typing import Any

import ml_collections

from glm5_jax.errors import UserError

PLATFORMS = ("", "cpu", "gpu", "tpu")
ACCELERATORS = ("gpu", "tpu")
CPU_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


class PlacementError(UserError):
    """A placement the devices cannot satisfy, or an unknown value."""


@dataclasses.dataclass(frozen=True)
class WorkerSlot:
    """What one rollout worker is given: set ``env`` before its JAX starts; Ray schedules it
    with ``ray_options``."""

    worker_id: int
    platform: str
    device_count: int
    env: dict[str, str]
    ray_options: dict[str, Any]
    cpus: tuple[int, ...] = ()  # host CPUs the worker's process may run on; (): unchanged

    def describe(self) -> str:
        shown = {k: v for k, v in self.env.items() if k != "XLA_FLAGS"}
        if self.platform == "cpu":
            shown["simulated_cpu_devices"] = str(self.device_count)
        if self.cpus:
            shown["cpus"] = ",".join(map(str, self.cpus))
        return ", ".join(f"{k}={v}" for k, v in sorted(shown.items()))


def validate_placement(config: ml_collections.ConfigDict) -> None:
    placement = config.placement
    for field in ("learner_platform", "rollout_platform"):
        if placement[field] not in PLATFORMS:
            raise PlacementError(f"placement.{field}={placement[field]!r}; allowed: {list(PLATFORMS)} "
                                 "('' = JAX's default for the learner, the learner's for rollouts)")
    if placement.learner_devices < 0:
        raise PlacementError(f"placement.learner_devices={placement.learner_devices} must be >= 0 "
                             "(0: every device of the learner's processes)")
    if placement.rollout_devices_per_worker < 1:
        raise PlacementError(f"placement.rollout_devices_per_worker="
                             f"{placement.rollout_devices_per_worker} must be >= 1")
    if placement.rollout_cpus_per_worker < 0:
        raise PlacementError(f"placement.rollout_cpus_per_worker={placement.rollout_cpus_per_worker} "
                             "must be >= 0")
    from glm5_jax.sharding import MeshSpecError, parse_mesh_spec

    try:
        parse_mesh_spec(placement.rollout_mesh or "tensor=-1", placement.rollout_devices_per_worker)
    except MeshSpecError as error:
        raise PlacementError(f"placement.rollout_mesh={placement.rollout_mesh!r} does not fit "
                             f"placement.rollout_devices_per_worker="
                             f"{placement.rollout_devices_per_worker}: {error}") from None
    if config.num_workers < 1:
        raise PlacementError(f"num_workers={config.num_workers} must be >= 1")
    for field in ("learner_cpus", "rollout_cpus"):
        cpu_list(placement, field)
    rollout = placement.rollout_platform or placement.learner_platform
    if rollout in ACCELERATORS and rollout == placement.learner_platform and \
            placement.learner_devices == 0 and not _workers_elsewhere(config):
        raise PlacementError(
            f"placement.learner_devices=0 gives the learner every {rollout} device of this host and "
            f"leaves none to the {config.num_workers} rollout workers on {rollout}: set "
            "placement.learner_devices (e.g. 4), or placement.rollout_platform='cpu'")


def _workers_elsewhere(config: ml_collections.ConfigDict) -> bool:
    """Ray actors on a cluster of other hosts: the learner's host keeps all its devices."""
    return config.backend == "ray" and bool(config.get("ray_address"))


# Host CPUs -------------------------------------------------------------------------------------
def cpu_list(placement: ml_collections.ConfigDict, field: str) -> tuple[int, ...]:
    """``placement.<field>`` (``"1"``, ``"0-2"``, ``"0,3"``; absent or ``""``: ()) as CPU ids."""
    text = str(placement.get(field, "") or "").strip()
    cpus: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise PlacementError(f"placement.{field}={text!r}: write CPU ids as taskset -c does "
                             "('1', '0-3', '0,2'; '' for no pinning)") from None
    host = os.cpu_count() or 1
    if any(cpu < 0 or cpu >= host for cpu in cpus):
        raise PlacementError(f"placement.{field}={text!r}: this host's CPUs are 0-{host - 1}")
    return tuple(sorted(cpus))


def pin_process(cpus: tuple[int, ...], field: str) -> None:
    """Every thread of this process (and what it starts later) on ``cpus`` only."""
    threads = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
    try:
        for thread in threads:
            os.sched_setaffinity(thread, cpus)
    except OSError as error:
        raise PlacementError(f"placement.{field}={','.join(map(str, cpus))}: cannot run there "
                             f"({error})") from None


# The learner -----------------------------------------------------------------------------------
def restrict_learner_process(config: ml_collections.ConfigDict, process_count: int = 1) -> None:
    """Before the learner's JAX starts: its host CPUs (``learner_cpus``), its platform, and on
    a host it shares with rollout workers on the same accelerator, only its own accelerators
    (the first ones)."""
    import jax

    placement = config.placement
    cpus = cpu_list(placement, "learner_cpus")
    if cpus:
        pin_process(cpus, "learner_cpus")
    if placement.learner_platform:
        jax.config.update("jax_platforms", placement.learner_platform)
    rollout = placement.rollout_platform or placement.learner_platform
    if placement.learner_devices == 0 or rollout not in ACCELERATORS or _workers_elsewhere(config) \
            or placement.learner_platform not in ("", rollout):
        return
    local = _per_process(placement.learner_devices, process_count)
    if rollout == "gpu":
        jax.config.update("jax_cuda_visible_devices", ",".join(map(str, range(local))))
    elif rollout == "tpu":
        os.environ.update(_tpu_env(list(range(local))))


def learner_devices(config: ml_collections.ConfigDict) -> list:
    """The devices of the learner's mesh: ``learner_devices`` of them, an equal share taken
    from the front of each process's local devices (all of them for 0)."""
    import jax

    placement = config.placement
    platform = jax.devices()[0].platform
    wanted = placement.learner_platform
    if wanted and platform != wanted:
        raise PlacementError(f"placement.learner_platform={wanted!r} but this process's JAX runs on "
                             f"{platform!r} (is the {wanted} backend installed and visible?)")
    if placement.learner_devices == 0:
        return list(jax.devices())
    count = placement.learner_devices
    if count > jax.device_count():
        raise PlacementError(f"placement.learner_devices={count} but the learner's processes have "
                             f"{jax.device_count()} {platform} devices; allowed: 0..{jax.device_count()}")
    local = _per_process(count, jax.process_count())
    chosen = []
    for process in range(jax.process_count()):
        mine = [d for d in jax.devices() if d.process_index == process]
        chosen += mine[:local]
    return chosen


def _per_process(count: int, process_count: int) -> int:
    if count % process_count:
        raise PlacementError(f"placement.learner_devices={count} must divide evenly over the "
                             f"{process_count} learner processes")
    return count // process_count


def resolved_rollout_platform(config: ml_collections.ConfigDict, learner_platform: str) -> str:
    return config.placement.rollout_platform or learner_platform


def learner_devices_beside_workers(config: ml_collections.ConfigDict, mesh) -> int:
    """How many of this host's devices of the workers' platform the learner holds (the workers
    on this host take the ones after them)."""
    learner_platform = mesh.devices.flat[0].platform
    if resolved_rollout_platform(config, learner_platform) != learner_platform:
        return 0
    return len([d for d in mesh.devices.flat if d.process_index == 0])


# Rollout workers -------------------------------------------------------------------------------
def worker_slot(config: ml_collections.ConfigDict, worker_id: int, platform: str,
                learner_local_devices: int) -> WorkerSlot:
    """The devices of worker ``worker_id`` (0-based), on ``platform``, beside a learner holding
    ``learner_local_devices`` accelerators of this host."""
    placement = config.placement
    k = placement.rollout_devices_per_worker
    xla_flags = _without_device_count(config.get("worker_xla_flags") or os.environ.get("XLA_FLAGS", ""))
    env = {"XLA_FLAGS": xla_flags}
    ray_options: dict[str, Any] = {"num_cpus": float(placement.rollout_cpus_per_worker)}
    if platform == "cpu":
        env["XLA_FLAGS"] = f"{xla_flags} {CPU_DEVICE_COUNT_FLAG}={k}".strip()
    elif config.backend == "ray":
        # Ray picks the accelerators and sets their visibility in the actor's process.
        if platform == "gpu":
            ray_options["num_gpus"] = float(k)
        else:
            ray_options["resources"] = {"TPU": float(k)}
    else:
        first = learner_local_devices + worker_id * k
        ordinals = list(range(first, first + k))
        available = local_accelerator_count(platform)
        if available is not None and ordinals[-1] >= available:
            raise PlacementError(
                f"placement.learner_devices ({learner_local_devices} on this host) + num_workers="
                f"{config.num_workers} x placement.rollout_devices_per_worker={k} needs "
                f"{learner_local_devices + config.num_workers * k} {platform} devices; this host has "
                f"{available}")
        if platform == "gpu":
            env["CUDA_VISIBLE_DEVICES"] = ",".join(physical_gpu_ids(ordinals))
        else:
            env.update(_tpu_env(ordinals))
    return WorkerSlot(worker_id, platform, k, env, ray_options, cpu_list(placement, "rollout_cpus"))


def _without_device_count(flags: str) -> str:
    return " ".join(f for f in flags.split() if not f.startswith(CPU_DEVICE_COUNT_FLAG))


def physical_gpu_ids(ordinals: list[int]) -> list[str]:
    """Ordinals among this process's visible GPUs -> the ids CUDA_VISIBLE_DEVICES takes."""
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return [visible[i] if i < len(visible) else str(i) for i in ordinals] if visible \
        else [str(i) for i in ordinals]


def _tpu_env(ordinals: list[int]) -> dict[str, str]:
    """One process owning ``ordinals`` of the host's chips (libtpu's single-host variables)."""
    bounds = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1", 8: "2,4,1"}.get(len(ordinals), f"1,{len(ordinals)},1")
    chips = ",".join(map(str, ordinals))
    return {"TPU_VISIBLE_CHIPS": chips, "TPU_VISIBLE_DEVICES": chips,
            "TPU_CHIPS_PER_PROCESS_BOUNDS": bounds, "TPU_PROCESS_BOUNDS": "1,1,1",
            "TPU_PROCESS_PORT": str(8476 + ordinals[0]), "CLOUD_TPU_TASK_ID": "0"}


def local_accelerator_count(platform: str) -> int | None:
    """This host's accelerators of ``platform`` without starting JAX; None if unknown."""
    if platform == "gpu":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            return len([v for v in visible.split(",") if v.strip()])
        if shutil.which("nvidia-smi"):
            try:
                listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                         timeout=20, check=False).stdout
            except (OSError, subprocess.SubprocessError):
                return None
            return sum(line.startswith("GPU ") for line in listing.splitlines())
        return None
    if platform == "tpu":
        chips = [name for name in os.listdir("/dev") if name.startswith("accel")] \
            if os.path.isdir("/dev") else []
        return len(chips) or None
    return None


def apply_worker_slot(slot: WorkerSlot) -> None:
    """In the worker's process, before its JAX starts: its host CPUs, platform and devices."""
    if slot.cpus:
        pin_process(slot.cpus, "rollout_cpus")
    os.environ.update(slot.env)
    import jax

    jax.config.update("jax_platforms", slot.platform)
    if slot.platform == "cpu":
        jax.config.update("jax_num_cpu_devices", slot.device_count)


# Records ---------------------------------------------------------------------------------------
def device_record(device) -> dict[str, Any]:
    return {"id": int(device.id), "platform": device.platform, "kind": device.device_kind,
            "process_index": int(device.process_index)}


def process_record(devices, mesh=None, **extra: Any) -> dict[str, Any]:
    """What ``run_info.json`` says about one JAX process of the run: where it runs, its devices."""
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "devices": [device_record(d) for d in devices], **extra}
    if hasattr(os, "sched_getaffinity"):
        record["cpus"] = sorted(os.sched_getaffinity(0))
    if mesh is not None:
        record["mesh"] = {name: int(size) for name, size in mesh.shape.items()}
    return record
