"""Thin ctypes bindings for the Linux calls the stdlib lacks on Python 3.10/3.11.

``os.unshare`` only exists from Python 3.12 and there is no ``mount``/``prctl`` at all,
so the sandbox calls libc directly. Every wrapper raises OSError with errno, like ``os``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

MNT_DETACH = 0x2

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_DUMPABLE = 4
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
# Syscalls without a libc wrapper everywhere, by architecture (asm/unistd_64.h on x86_64,
# asm-generic/unistd.h on aarch64; numbers above 424 are shared by every architecture).
_SYSCALL_NUMBERS = {
    "x86_64": {"pivot_root": 155, "mount_setattr": 442},
    "aarch64": {"pivot_root": 41, "mount_setattr": 442},
}.get(platform.machine(), {})

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _syscall(name: str, *args) -> None:
    number = _SYSCALL_NUMBERS.get(name)
    if number is None:
        raise OSError(38, f"{name}: unknown syscall number on {platform.machine()}")
    _check(0 if _libc.syscall(number, *args) == 0 else -1, name)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    def encode(value: str | None) -> bytes | None:
        return None if value is None else value.encode()

    _check(_libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)),
           f"mount({target})")


def bind_mount(source: str, target: str) -> None:
    """Bind ``source`` (with the mounts under it) onto ``target``."""
    mount(source, target, None, MS_BIND | MS_REC)


def detach_mount(target: str) -> None:
    """Lazily unmount ``target`` (umount2 MNT_DETACH): gone from view now, freed when unused."""
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount2({target})")


def pivot_root(new_root: str, put_old: str) -> None:
    _syscall("pivot_root", new_root.encode(), put_old.encode())


def make_tree_read_only(path: str, extra_flags: int = 0) -> None:
    """Recursively mark every mount under ``path`` read-only (mount_setattr, Linux 5.12+),
    plus ``extra_flags`` (``MOUNT_ATTR_NOSUID`` and friends)."""
    _set_tree_attributes(path, set_flags=MOUNT_ATTR_RDONLY | extra_flags, clear_flags=0)


def make_tree_writable(path: str) -> None:
    """Undo ``make_tree_read_only`` for the mounts under ``path``."""
    _set_tree_attributes(path, set_flags=0, clear_flags=MOUNT_ATTR_RDONLY)


def _set_tree_attributes(path: str, set_flags: int, clear_flags: int) -> None:
    attr = ctypes.create_string_buffer(struct.pack("QQQQ", set_flags, clear_flags, 0, 0), 32)
    _syscall("mount_setattr", ctypes.c_int(_AT_FDCWD), path.encode(), ctypes.c_uint(_AT_RECURSIVE),
             attr, ctypes.c_size_t(32))


def prctl(option: int, value: int, argument: int = 0) -> None:
    _check(_libc.prctl(option, value, argument, 0, 0), f"prctl({option})")


def set_process_name(name: str) -> None:
    """The name ``ps``, ``top`` and ``perf`` show for this process (15 bytes at most)."""
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    _check(_libc.prctl(PR_SET_NAME, ctypes.addressof(buffer), 0, 0, 0), "prctl(PR_SET_NAME)")


def prctl_get(option: int) -> int:
    """A prctl that answers with its return value (e.g. ``PR_GET_SECCOMP``)."""
    result = _libc.prctl(option, 0, 0, 0, 0)
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")
    return result
