"""Entering fresh Linux namespaces (the supervisor does this for each sample).

The pid namespace applies to children only: the supervisor's next fork (init) becomes
its pid 1. Without root, a user namespace comes first and grants the capabilities the
others need; many kernels allow that, some distributions forbid it (see SANDBOX.md).
"""

from __future__ import annotations

import os

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.sandbox_child import linux

_NAMESPACES = (  # (tag, clone flag), in the order they are entered
    ("mount-ns", linux.CLONE_NEWNS),
    ("net-ns", linux.CLONE_NEWNET),
    ("pid-ns", linux.CLONE_NEWPID),
    ("ipc-ns", linux.CLONE_NEWIPC),
    ("uts-ns", linux.CLONE_NEWUTS),
    ("cgroup-ns", linux.CLONE_NEWCGROUP),  # /proc/self/cgroup hides the host's cgroup paths
)

# SysV IPC objects live in the kernel, outside every rlimit and tmpfs size, for as long as
# the ipc namespace does; a fresh namespace allows ~2^64 bytes of shared memory, 32000
# message queues of 16 KiB and 32000 semaphore sets of 32000. Bounded per sample here:
# shared memory to one scratch tmpfs' worth, 16 queues (256 KiB), 16 small semaphore sets.
_PAGE = os.sysconf("SC_PAGE_SIZE")
IPC_LIMITS = (
    ("kernel/shmmax", str(SandboxLimits().scratch_bytes)),
    ("kernel/shmall", str(SandboxLimits().scratch_bytes // _PAGE)),
    ("kernel/shmmni", "16"),
    ("kernel/msgmni", "16"),
    ("kernel/sem", "32 512 32 16"),  # semaphores per set, in total, per semop, sets
)


def enter_namespaces(enter_pid: bool = True) -> list[str]:
    """Unshare every namespace the kernel allows; returns the tags of those entered.

    Not root: first try a user namespace, which grants the capabilities the others need
    (many kernels allow this to unprivileged users; some distributions forbid it).
    The pid namespace applies to children only: the next fork becomes its pid 1; with
    ``enter_pid=False`` it is left for the caller (to fork something outside it first).
    """
    tags = []
    if os.geteuid() != 0:
        try:
            _enter_user_namespace()
            tags.append("user-ns")
        except OSError:
            return tags
    for tag, flag in _NAMESPACES:
        if tag == "pid-ns" and not enter_pid:
            continue
        try:
            linux.unshare(flag)
            tags.append(tag)
        except OSError:
            pass
    if "ipc-ns" in tags and bound_ipc_namespace():
        tags.append("ipc-limits")
    return tags


def bound_ipc_namespace() -> bool:
    """Set IPC_LIMITS in the ipc namespace just entered; False if any was refused."""
    for name, value in IPC_LIMITS:
        try:
            with open(f"/proc/sys/{name}", "w") as handle:
                handle.write(value)
        except OSError:
            return False
    return True


def _enter_user_namespace() -> None:
    uid, gid = os.geteuid(), os.getegid()
    linux.unshare(linux.CLONE_NEWUSER)
    with open("/proc/self/setgroups", "w") as handle:
        handle.write("deny")
    with open("/proc/self/uid_map", "w") as handle:
        handle.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as handle:
        handle.write(f"0 {gid} 1")
