"""JAX's distributed runtime, started once, before anything touches devices.

Every entry point (``glm5_jax.train``, the RL learner, the planner, the sweep's points)
calls ``initialize()`` first. Where the processes of a job come from:

* **explicit**: ``GLM5_COORDINATOR_ADDRESS`` (host:port), ``GLM5_NUM_PROCESSES`` and
  ``GLM5_PROCESS_ID`` in the environment (``launch/local.py`` sets them), or the same as
  arguments. ``GLM5_CPU_DEVICES_PER_PROCESS`` gives each CPU process that many simulated
  devices; CPU collectives go through gloo.
* **auto-detected**: a SLURM job step with more than one task, or a multi-host Cloud TPU
  slice (``TPU_WORKER_HOSTNAMES`` lists several hosts, or Multislice's
  ``MEGASCALE_COORDINATOR_ADDRESS``): ``jax.distributed.initialize()`` reads the rest
  from the cluster (its own cluster detection).
* otherwise one process, and nothing to start.

Why this cannot be lazy: JAX fixes the device list the first time any backend starts, and
a process that has already looked at its devices can no longer join a job.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Optional

import jax
from glm5_jax.errors import UserError

COORDINATOR_ENV = "GLM5_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "GLM5_NUM_PROCESSES"
PROCESS_ID_ENV = "GLM5_PROCESS_ID"
CPU_DEVICES_ENV = "GLM5_CPU_DEVICES_PER_PROCESS"
HEARTBEAT_TIMEOUT_SECONDS = 30  # how soon the survivors notice a dead process


class DistributedSetupError(UserError):
    """The environment names an incomplete or inconsistent multi-process job."""


@dataclasses.dataclass(frozen=True)
class JobShape:
    """How this process was started: ``source`` is "explicit", "slurm", "tpu" or "single"."""

    source: str
    coordinator: Optional[str] = None
    num_processes: int = 1
    process_id: int = 0
    cpu_devices_per_process: Optional[int] = None


_STARTED: Optional[JobShape] = None


def job_shape(environ: Mapping[str, str] = os.environ) -> JobShape:
    """What the environment says about this process's job (no side effects)."""
    cpu_devices = _positive(environ, CPU_DEVICES_ENV) if environ.get(CPU_DEVICES_ENV) else None
    explicit = [environ.get(name) for name in (COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV)]
    if any(explicit):
        if not all(explicit):
            raise DistributedSetupError(
                f"set all of {COORDINATOR_ENV}, {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV} for a "
                f"multi-process job, or none of them (got {explicit})")
        count = _positive(environ, NUM_PROCESSES_ENV)
        index = int(environ[PROCESS_ID_ENV]) if environ[PROCESS_ID_ENV].isdigit() else -1
        if not 0 <= index < count:
            raise DistributedSetupError(
                f"{PROCESS_ID_ENV}={environ[PROCESS_ID_ENV]!r} must be in [0, {count})")
        return JobShape("explicit", environ[COORDINATOR_ENV], count, index, cpu_devices)
    if int(environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in environ:
        return JobShape("slurm", num_processes=int(environ["SLURM_NTASKS"]),
                        process_id=int(environ.get("SLURM_PROCID", 0)),
                        cpu_devices_per_process=cpu_devices)
    # (libtpu writes a warning sentence with commas into this variable when it finds no
    # TPU; a child process inherits it, so only host-like entries count.)
    hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",")
             if h.strip() and " " not in h.strip()]
    if len(hosts) > 1 or environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return JobShape("tpu", num_processes=max(len(hosts), 1),
                        process_id=int(environ.get("TPU_WORKER_ID", 0) or 0))
    return JobShape("single", cpu_devices_per_process=cpu_devices)


def _positive(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    if not value.isdigit() or int(value) < 1:
        raise DistributedSetupError(f"{name}={value!r} must be a positive integer")
    return int(value)


def initialize(environ: Mapping[str, str] = os.environ) -> JobShape:
    """Start (or join) the job the environment describes; a no-op when called again."""
    global _STARTED
    if _STARTED is not None:
        return _STARTED
    shape = job_shape(environ)
    if shape.cpu_devices_per_process is not None:
        jax.config.update("jax_num_cpu_devices", shape.cpu_devices_per_process)
    if shape.source == "explicit":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(shape.coordinator, shape.num_processes, shape.process_id,
                                   heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS)
    elif shape.source in ("slurm", "tpu"):
        jax.distributed.initialize()
    _STARTED = shape
    return shape


def is_multiprocess() -> bool:
    return jax.process_count() > 1


BARRIER_TIMEOUT_SECONDS = 1800  # a compile on a loaded host may take minutes; a dead peer is
# noticed sooner through the heartbeat (HEARTBEAT_TIMEOUT_SECONDS)


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_SECONDS) -> None:
    """Wait until every process of the job reaches ``name`` (the coordination service's
    barrier, not a collective); a no-op in a one-process job.

    Why: CPU collectives (gloo) connect lazily, at a program's first collective, and give up
    after gloo's own ~30 s connect timeout. A process that finished compiling a step long
    before its peers (a loaded host) would otherwise wait there and fail the job with
    "Gloo context initialization failed: Connect timeout"."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None:  # started without JAX's distributed runtime (e.g. by a TPU runtime)
        return
    client.wait_at_barrier(name, int(timeout_s * 1000))

