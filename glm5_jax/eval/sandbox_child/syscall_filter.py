"""A seccomp filter for the runner: kernel interfaces that sample code never needs.

Installed by the runner as its very last isolation step (after the privilege drop and,
without root, after it entered its own user namespace, which this filter would refuse).
Inherited by every thread and child and irrevocable, it answers EPERM to:

- creating or joining namespaces: ``unshare`` (whatever its flags), ``setns``, ``clone``
  with any namespace flag (``clone3`` answers ENOSYS: its flags sit in memory, which a
  filter cannot read, and glibc then falls back to ``clone``);
- mounting: ``mount``, ``umount2``, ``pivot_root``, ``chroot`` and the new mount API;
- ``ptrace``, ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring_*``, keyrings
  (``keyctl``, ``add_key``, ``request_key``), kernel modules, ``kexec_*``, ``reboot``;
- memory outside every tmpfs size: ``memfd_create``, ``memfd_secret``.

These are kernel attack surface, or (after a user namespace) the way to gain mount
powers; none is used by the standard library on behalf of ordinary code. The program is
classic BPF built here (no libseccomp): it checks the architecture first -- any other
ABI (i386 through ``int 0x80``, x32) is refused whole -- then the syscall number.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct
from typing import NamedTuple

from glm5_jax.eval.sandbox_child import linux

# Numbers from asm/unistd_64.h (x86_64) and asm-generic/unistd.h (aarch64); 424 and up
# are shared by every architecture.
_SHARED = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
           "fsmount": 432, "fspick": 433, "mount_setattr": 442, "open_tree_attr": 467,
           "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
           "memfd_secret": 447}
_X86_64 = {"unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
           "chroot": 161, "ptrace": 101, "bpf": 321, "keyctl": 250, "add_key": 248,
           "request_key": 249, "perf_event_open": 298, "userfaultfd": 323,
           "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246,
           "kexec_file_load": 320, "reboot": 169, "memfd_create": 319}
_AARCH64 = {"unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
            "chroot": 51, "ptrace": 117, "bpf": 280, "keyctl": 219, "add_key": 217,
            "request_key": 218, "perf_event_open": 241, "userfaultfd": 282,
            "init_module": 105, "finit_module": 273, "delete_module": 106, "kexec_load": 104,
            "kexec_file_load": 294, "reboot": 142, "memfd_create": 279}


class Architecture(NamedTuple):
    audit_arch: int  # seccomp_data.arch of the native ABI
    denied: dict[str, int]
    clone: int
    clone3: int
    foreign_bit: int | None  # syscall numbers with this bit belong to another ABI (x32)


ARCHITECTURES = {
    "x86_64": Architecture(0xC000003E, {**_X86_64, **_SHARED}, 56, 435, 0x40000000),
    "aarch64": Architecture(0xC00000B7, {**_AARCH64, **_SHARED}, 220, 435, None),
}
NAMESPACE_FLAGS = (linux.CLONE_NEWNS | linux.CLONE_NEWCGROUP | linux.CLONE_NEWUTS
                   | linux.CLONE_NEWIPC | linux.CLONE_NEWUSER | linux.CLONE_NEWPID
                   | linux.CLONE_NEWNET)
TAG = "seccomp"

_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_NR, _ARCH, _ARG0_LOW = 0, 4, 16  # args are little-endian on both architectures
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06


def available(machine: str | None = None) -> bool:
    """Whether this architecture has a filter (the runner installs it wherever it does)."""
    return (machine or platform.machine()) in ARCHITECTURES


def isolation_tags() -> list[str]:
    return [TAG] if available() else []


def filter_program(machine: str) -> list[tuple[int, int, int, int]]:
    """The BPF program as (code, jump if true, jump if false, k) instructions."""
    arch = ARCHITECTURES[machine]
    # Jumps name a label; resolved to relative offsets once the layout is known.
    body: list[tuple] = [
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ, None, "deny", arch.audit_arch),
        (_LD_W_ABS, 0, 0, _NR),
    ]
    if arch.foreign_bit is not None:
        body.append((_JGE, "deny", None, arch.foreign_bit))
    body.append((_JEQ, "no_clone3", None, arch.clone3))
    body.append((_JEQ, "clone", None, arch.clone))
    for number in sorted(arch.denied.values()):
        body.append((_JEQ, "deny", None, number))
    body.append((_RET, 0, 0, _RET_ALLOW))
    labels = {"clone": len(body)}
    body += [(_LD_W_ABS, 0, 0, _ARG0_LOW), (_JSET, "deny", None, NAMESPACE_FLAGS),
             (_RET, 0, 0, _RET_ALLOW)]
    labels["deny"] = len(body)
    body.append((_RET, 0, 0, _RET_ERRNO | errno.EPERM))
    labels["no_clone3"] = len(body)
    body.append((_RET, 0, 0, _RET_ERRNO | errno.ENOSYS))

    def offset(target, index: int) -> int:
        return 0 if target is None or target == 0 else labels[target] - index - 1

    return [(code, offset(true, i), offset(false, i), k)
            for i, (code, true, false, k) in enumerate(body)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """Install the filter on the calling thread (and so on everything it starts later).

    Needs ``PR_SET_NO_NEW_PRIVS`` first (the runner sets it). Call it while the process
    has one thread; it raises if the kernel did not put the process in filter mode.
    A no-op on an architecture without a table (``available()``).
    """
    machine = platform.machine()
    if not available(machine):
        return
    program = filter_program(machine)
    code = ctypes.create_string_buffer(
        b"".join(struct.pack("=HBBI", *instruction) for instruction in program))
    fprog = _SockFprog(len(program), ctypes.addressof(code))
    linux.prctl(linux.PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
    if linux.prctl_get(linux.PR_GET_SECCOMP) != _SECCOMP_MODE_FILTER:
        raise PermissionError("the seccomp filter did not take effect")
