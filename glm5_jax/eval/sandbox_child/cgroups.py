"""Group limits for a sample's whole process tree, where the host lets us use cgroups.

Why, on top of rlimits: rlimits bound each process, so a sample that forks
``max_processes`` children could still hold ``max_processes x memory_bytes`` of memory
and keep that many cores busy. A cgroup bounds the tree as a whole: resident memory
(tmpfs scratch included), process count, and CPU share (so a runaway sample cannot take
more than its cores from concurrent samples).

Best effort and optional: cgroup v1 hierarchies (memory, pids, cpu) or a cgroup v2
directory where the controllers are delegated. Whatever could be set up is listed in the
sample's isolation tags ("cgroup-memory", "cgroup-pids", "cgroup-cpu").

Two things the supervisor's own isolation changes, and how this module copes: its
cgroup namespace makes /proc/self/cgroup show paths relative to it, so this process's
own cgroups are read once, when the module is imported (in the zygote, before any
sandbox exists); and its new root shows no /sys, so each group directory is opened
when the group is prepared and the limits are written through that descriptor.
"""

from __future__ import annotations

import dataclasses
import os

from glm5_jax.eval.limits import SandboxLimits

CGROUP_ROOT = "/sys/fs/cgroup"
CPU_PERIOD_US = 100_000
HELPER_MEMORY_BYTES = 64 << 20  # the supervisor and init share the sample's group
HELPER_PROCESSES = 2


@dataclasses.dataclass(frozen=True)
class SampleCgroups:
    """The cgroup directories one worker's samples run in, by controller."""

    memory: str | None = None
    pids: str | None = None
    cpu: str | None = None
    unified: bool = False  # all three are one cgroup v2 directory
    # (directory, open descriptor): written through after the host tree left our view
    descriptors: tuple[tuple[str, int], ...] = ()

    @property
    def directories(self) -> list[str]:
        return sorted({d for d in (self.memory, self.pids, self.cpu) if d is not None})


def cgroup_name(uid: int, sequence: int) -> str:
    """Two groups per worker, alternating: the prepared spare never shares the group (and
    so the memory and process budget) of the sample running beside it."""
    return f"glm5-sandbox-{uid}-{'ab'[sequence % 2]}"


def prepare_cgroups(name: str) -> SampleCgroups:
    """Create (or reuse) a cgroup by name; an empty result where none are usable."""
    if _is_unified():
        return _prepare_v2(name)
    found = {}
    for controller in ("memory", "pids", "cpu"):
        parent = _v1_parent(controller)
        if parent is None:
            continue
        path = os.path.join(parent, name)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            continue
        found[controller] = path
    return _with_descriptors(SampleCgroups(**found))


def _with_descriptors(groups: SampleCgroups) -> SampleCgroups:
    opened = []
    for directory in groups.directories:
        try:
            opened.append((directory, os.open(directory, os.O_RDONLY | os.O_DIRECTORY
                                              | os.O_CLOEXEC)))
        except OSError:
            pass
    return dataclasses.replace(groups, descriptors=tuple(opened))


def remove_cgroups(uid: int) -> None:
    """Delete a worker's (empty) groups when the worker stops; missing ones are fine."""
    parents = ([os.path.join(CGROUP_ROOT, (_own_cgroup("") or "/").lstrip("/"))]
               if _is_unified() else
               [p for p in (_v1_parent(c) for c in ("memory", "pids", "cpu")) if p])
    for parent in parents:
        for sequence in (0, 1):
            try:
                os.rmdir(os.path.join(parent, cgroup_name(uid, sequence)))
            except OSError:
                pass


def _is_unified() -> bool:
    return os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers"))


def apply_cgroup_limits(groups: SampleCgroups, limits: SandboxLimits) -> list[str]:
    """Write the sample's limits; returns the tags of those that took effect."""
    tags = []
    memory_file, pids_file = ("memory.max", "pids.max") if groups.unified else \
        ("memory.limit_in_bytes", "pids.max")
    memory = limits.memory_bytes + HELPER_MEMORY_BYTES
    if groups.memory and _write(groups, groups.memory, memory_file, str(memory)):
        tags.append("cgroup-memory")
    if groups.pids and _write(groups, groups.pids, pids_file,
                              str(limits.max_processes + HELPER_PROCESSES)):
        tags.append("cgroup-pids")
    if groups.cpu and limits.cpu_cores is not None:
        quota = max(1000, int(limits.cpu_cores * CPU_PERIOD_US))
        if groups.unified:
            ok = _write(groups, groups.cpu, "cpu.max", f"{quota} {CPU_PERIOD_US}")
        else:
            ok = (_write(groups, groups.cpu, "cpu.cfs_period_us", str(CPU_PERIOD_US))
                  and _write(groups, groups.cpu, "cpu.cfs_quota_us", str(quota)))
        if ok:
            tags.append("cgroup-cpu")
    return tags


def join_cgroups(groups: SampleCgroups) -> None:
    """Move the calling process (and so all its future children) into the groups."""
    for directory in groups.directories:
        _write(groups, directory, "cgroup.procs", "0")


def _prepare_v2(name: str) -> SampleCgroups:
    own = _own_cgroup("")
    if own is None:
        return SampleCgroups()
    parent = os.path.join(CGROUP_ROOT, own.lstrip("/"))
    path = os.path.join(parent, name)
    try:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "cgroup.controllers")) as handle:
            available = set(handle.read().split())
    except OSError:
        return SampleCgroups()
    return _with_descriptors(SampleCgroups(memory=path if "memory" in available else None,
                                           pids=path if "pids" in available else None,
                                           cpu=path if "cpu" in available else None,
                                           unified=True))


def _v1_parent(controller: str) -> str | None:
    mount = os.path.join(CGROUP_ROOT, controller)
    own = _own_cgroup(controller)
    if own is None or not os.path.isdir(mount):
        return None
    parent = os.path.join(mount, own.lstrip("/"))
    return parent if os.access(parent, os.W_OK) else None


def _read_own_cgroups() -> list[tuple[str, str]]:
    """(controllers, path) per hierarchy of this process, from /proc/self/cgroup."""
    try:
        with open("/proc/self/cgroup") as handle:
            return [tuple(line.rstrip("\n").split(":", 2)[1:]) for line in handle]
    except (OSError, ValueError):
        return []


_OWN_CGROUPS = _read_own_cgroups()  # before any cgroup namespace: see the module docstring


def _own_cgroup(controller: str) -> str | None:
    """This process's cgroup path for a v1 controller ("" means the v2 hierarchy)."""
    for controllers, path in _OWN_CGROUPS:
        if controller in controllers.split(",") or (controller == controllers == ""):
            return path
    return None


def _write(groups: SampleCgroups, directory: str, name: str, value: str) -> bool:
    """Write a cgroup file, through the directory's descriptor where there is one."""
    directory_fd = dict(groups.descriptors).get(directory)
    try:
        if directory_fd is None:
            fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CLOEXEC)
        else:
            fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=directory_fd)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
        return True
    except OSError:
        return False
