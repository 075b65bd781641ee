"""Exclusive unprivileged uids for concurrent sandboxes, across threads and processes.

Why one uid per live sandbox: RLIMIT_NPROC counts every process of a uid, and a process
may signal any other of its own uid. With a shared uid (say ``nobody``), a fork bomb in
one sample would starve a second sample's threads, and ``kill(-1, SIGKILL)`` in one
would kill the others. A uid is held through an flock on a root-owned lock file, so
parallel test workers or several pools on one host never hand out the same one.

The lock directory is one fixed path for the whole host (not under ``TMPDIR``, which
differs between processes), and it is refused unless it is a real directory owned by
us and closed to everyone else: a directory planted by another user could otherwise
hand two pools the same uid, or let its owner steal the locks.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import stat

from glm5_jax.eval.sandbox_child.reaping import kill_processes_of_uid

# One path for the whole host whatever TMPDIR says; under /run it is cleared on reboot,
# as the flocks in it are.
LOCK_DIR = os.path.join("/run" if os.path.isdir("/run") else "/var/lock",
                        "glm5-sandbox-uid-locks")


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
    open_lock_dir(lock_dir)
    for uid in range(uid_base, uid_base + uid_count):
        if _has_account(uid):
            continue
        fd = os.open(os.path.join(lock_dir, f"{uid}.lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        kill_processes_of_uid(uid)
        return UidSlot(uid, fd)
    raise RuntimeError(f"all sandbox uids {uid_base}..{uid_base + uid_count - 1} are in use")


def open_lock_dir(lock_dir: str) -> None:
    """Create ``lock_dir`` (0700) or check that the existing one is ours and private."""
    try:
        os.mkdir(lock_dir, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(lock_dir)
    problems = []
    if not stat.S_ISDIR(info.st_mode):
        problems.append("is not a directory (a symlink?)")
    if info.st_uid != os.geteuid():
        problems.append(f"is owned by uid {info.st_uid}, not {os.geteuid()}")
    if info.st_mode & 0o077:
        problems.append(f"has mode {stat.S_IMODE(info.st_mode):o} (group/other access)")
    if problems:
        raise RuntimeError(f"refusing the sandbox uid lock directory {lock_dir}: it "
                           + " and ".join(problems) + "; remove it and retry")


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
