"""The runner's last steps before sample code: kernel limits, giving up root, and the
syscall filter.

Order matters: hard rlimits are set while privileged (so they cannot be raised again),
then the uid drop makes them, and everything else, binding; the syscall filter comes
last, once nothing the runner still has to do needs what it denies.
"""

from __future__ import annotations

import os
import resource

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.sandbox_child import landlock, syscall_filter
from glm5_jax.eval.sandbox_child.filesystem import SCRATCH_DIRS


def set_oom_score_adj(value: int) -> bool:
    """Steer the OOM killer: +1000 for the runner (its tree dies first), -1000 for trusted
    helpers. Raising is always allowed; lowering may be refused (some VMs), hence a bool."""
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write(str(value))
        return True
    except OSError:
        return False


def apply_rlimits(limits: SandboxLimits) -> None:
    """Kernel-enforced ceilings; soft equals hard so the program cannot raise them."""
    cpu = limits.effective_cpu_s
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL
    for kind, value in (
        (resource.RLIMIT_AS, limits.memory_bytes),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes),
        (resource.RLIMIT_NPROC, limits.max_processes),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(kind, (value, value))


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good (real, effective and saved), with no extra groups."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PermissionError("privilege drop did not take effect")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PermissionError("privilege drop is reversible; refusing to run untrusted code")


def confine(private_root: bool, swept_scratch: bool) -> None:
    """The runner's last isolation step, for good. Without a root of its own (no mount
    namespace) Landlock lets it read only what the interpreter needs and write only
    beneath its working directory (the current one) and, where teardown sweeps them for
    the sample's uid (``swept_scratch``), the host's scratch dirs. Then the syscall filter
    denies the kernel interfaces sample code never needs. Needs ``PR_SET_NO_NEW_PRIVS``."""
    if not private_root:
        writable = [os.getcwd(), *(SCRATCH_DIRS if swept_scratch else ())]
        landlock.restrict_writes_to(writable)
    syscall_filter.install()


def confinement_tags(private_root: bool) -> list[str]:
    """The isolation tags of what ``confine`` puts in force on this machine."""
    return (landlock.isolation_tags() if not private_root else []) + \
        syscall_filter.isolation_tags()
