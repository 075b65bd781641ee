"""Exclusive unprivileged uids for concurrent sandboxes, across threads and processes.

Why one uid per live sandbox: RLIMIT_NPROC counts every process of a uid, and a process
may signal any other of its own uid. With a shared uid (say ``nobody``), a fork bomb in
one sample would starve a second sample's threads, and ``kill(-1, SIGKILL)`` in one
would kill the others. A uid is held through an flock on a root-owned lock file, so
parallel test workers or several pools on one host never hand out the same one.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import tempfile

from glm5_jax.eval.sandbox_child.reaping import kill_processes_of_uid

LOCK_DIR = os.path.join(tempfile.gettempdir(), "glm5-sandbox-uid-locks")


class UidSlot:
    """A held uid; ``release`` (or process exit) frees it for others."""

    def __init__(self, uid: int, lock_fd: int) -> None:
        self.uid = uid
        self.gid = uid
        self._lock_fd: int | None = lock_fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None


def acquire_uid_slot(uid_base: int, uid_count: int, lock_dir: str = LOCK_DIR) -> UidSlot:
    """Lock the first free uid of the range that no named account uses.

    Leftover processes of that uid (from a host that crashed mid-sample) are killed
    before it is handed out, so every sandbox starts with its uid's process count at zero.
    """
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    for uid in range(uid_base, uid_base + uid_count):
        if _has_account(uid):
            continue
        fd = os.open(os.path.join(lock_dir, f"{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        kill_processes_of_uid(uid)
        return UidSlot(uid, fd)
    raise RuntimeError(f"all sandbox uids {uid_base}..{uid_base + uid_count - 1} are in use")


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
