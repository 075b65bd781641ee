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
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_REC = 0x4000
MS_PRIVATE = 0x40000

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1
# mount_setattr(2) shares one number on the architectures that use the unified table.
_SYS_MOUNT_SETATTR = {"x86_64": 442, "aarch64": 442}.get(platform.machine())

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    def encode(value: str | None) -> bytes | None:
        return None if value is None else value.encode()

    _check(_libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)),
           f"mount({target})")


def make_tree_read_only(path: str) -> None:
    """Recursively mark every mount under ``path`` read-only (mount_setattr, Linux 5.12+)."""
    _set_tree_attributes(path, set_flags=_MOUNT_ATTR_RDONLY, clear_flags=0)


def make_tree_writable(path: str) -> None:
    """Undo ``make_tree_read_only`` for the mounts under ``path``."""
    _set_tree_attributes(path, set_flags=0, clear_flags=_MOUNT_ATTR_RDONLY)


def _set_tree_attributes(path: str, set_flags: int, clear_flags: int) -> None:
    if _SYS_MOUNT_SETATTR is None:
        raise OSError(38, "mount_setattr: unknown syscall number on this architecture")
    attr = ctypes.create_string_buffer(struct.pack("QQQQ", set_flags, clear_flags, 0, 0), 32)
    result = _libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, path.encode(), _AT_RECURSIVE, attr, 32)
    _check(0 if result == 0 else -1, f"mount_setattr({path})")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), f"prctl({option})")
