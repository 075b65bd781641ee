"""Landlock for the runner when it has no root of its own (no mount namespace).

Without a mount namespace the sample sees the host's tree, so the runner confines itself
with Landlock (an unprivileged LSM, Linux 5.13+; it needs no_new_privs, which the runner
sets). It may read only what the interpreter needs (the paths ``minimal_root`` would
show and the few /dev nodes; not /proc, which is the host's here), and write, create or
delete only beneath its working directory and, as a sandbox uid, the scratch dirs that
teardown sweeps for that uid. So nothing it creates lands where teardown does not look,
and host files (the checkout, benchmark data, /etc, home directories) cannot be read,
whatever their permissions. Where the kernel's Landlock ABI allows it, also: no TCP bind
or connect (ABI 4), no connecting to abstract unix sockets and no signals to processes
outside the sandbox (ABI 6).

Not covered by Landlock: connecting to a *path* unix socket whose file is writable
(Landlock does not mediate it), UDP, and seeing names (stat, readlink and path lookup
are not checked; only opening, listing, executing and changing are). Where the kernel
lacks Landlock nothing is installed and ``isolation_tags`` says so.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct

from glm5_jax.eval.sandbox_child import minimal_root

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446  # the same on every architecture
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1}  # +REFER, +TRUNCATE
TRUNCATE = 1 << 14
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1

READ_ONLY = EXECUTE | READ_FILE | READ_DIR
DEVICES = (("null", True), ("zero", True), ("full", True), ("random", False),
           ("urandom", False))  # (name, writable)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 without Landlock (or with it disabled)."""
    version = _libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0),
                            ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(version), 0)


def isolation_tags() -> list[str]:
    """What ``restrict_writes_to`` puts in force on this kernel."""
    abi = abi_version()
    if abi == 0:
        return []
    return (["landlock-files"] + (["landlock-tcp"] if abi >= 4 else [])
            + (["landlock-scope"] if abi >= 6 else []))


def restrict_writes_to(writable: list[str]) -> None:
    """Confine this process (and all it starts) to reading what the interpreter needs
    and writing beneath the ``writable`` directories. Irrevocable. A no-op without
    Landlock; raises if a supported kernel refuses."""
    abi = abi_version()
    if abi == 0:
        return
    fs_rights = _FS_RIGHTS_BY_ABI[min(abi, 3)]
    attributes = struct.pack("=Q", fs_rights)
    if abi >= 4:
        attributes += struct.pack("=Q", _NET_BIND_TCP | _NET_CONNECT_TCP)
    if abi >= 6:
        attributes += struct.pack("=Q", _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
    buffer = ctypes.create_string_buffer(attributes, len(attributes))
    ruleset = _check(_libc.syscall(_CREATE_RULESET, buffer, ctypes.c_size_t(len(attributes)),
                                   ctypes.c_uint32(0)), "landlock_create_ruleset")
    try:
        for path, rights in _rules(writable, fs_rights):
            _allow_beneath(ruleset, path, rights & fs_rights)
        _check(_libc.syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)),
               "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _rules(writable: list[str], fs_rights: int) -> list[tuple[str, int]]:
    rules = [(path, READ_ONLY) for path in minimal_root.shown_host_paths()]
    for name, device_writable in DEVICES:
        rights = READ_FILE | (WRITE_FILE | TRUNCATE if device_writable else 0)
        rules.append((f"/dev/{name}", rights))
    rules += [(directory, fs_rights) for directory in writable]
    return rules


def _allow_beneath(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # e.g. the interpreter under a 0700 /root, after the uid drop: not needed
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE  # what a file rule may hold
        attribute = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
        _check(_libc.syscall(_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                             attribute, ctypes.c_uint32(0)), f"landlock_add_rule({path})")
    finally:
        os.close(fd)


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return int(result)
