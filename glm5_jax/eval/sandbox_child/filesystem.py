"""The sample's view of the filesystem: its own minimal root, private scratch space.

Done by the supervisor (and init for /proc) while still privileged, before the runner
exists; undone by the kernel when the mount namespace dies. Without a mount namespace
the supervisor deletes the sample's files itself, by descriptor (``remove_directory``,
``remove_files_of_uid``), never following a link the sample could have planted.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.sandbox_child import linux, minimal_root

PRIVATE_WORKDIR = "/tmp/sandbox"
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
SCRATCH_FLAGS = linux.MS_NOSUID | linux.MS_NODEV


def prepare_filesystem(namespaces: list[str], uid: int | None, gid: int | None,
                       keep_writable: tuple[str, ...] = ()) -> tuple[str, list[str], str | None]:
    """Make the working directory; returns (workdir, tags, host directory to remove).

    With a mount namespace the sample gets its own root (``minimal_root``): the
    interpreter, the standard library and the system libraries it loads, read-only, and
    nothing else of the host; /tmp, /var/tmp and /dev/shm are fresh size-limited tmpfs
    mounts that each runner makes in a mount namespace of its own (``enter_private_scratch``),
    so they vanish with that sample's processes. Should the kernel refuse that root, the whole
    host tree is shown read-only instead (``keep_writable`` mounts excepted) and the tags
    say so: "read-only-root" without "minimal-root". Without a mount namespace, the
    workdir is a host temporary directory that the supervisor deletes afterwards.
    """
    tags = []
    if "mount-ns" in namespaces:
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        tags += _enter_minimal_root(namespaces) or _read_only_host_tree(keep_writable)
        tags.append("private-tmp")  # each runner mounts its own (enter_private_scratch)
        return PRIVATE_WORKDIR, tags, None
    # The harness's own directory stays ours (0711: the sample may only pass through
    # it); only work/ inside it is the sample's. So the uid's sweep of /tmp, run when
    # another sample of the same uid ends, never touches it, and the sample cannot
    # rename it or swap it for a symlink before teardown deletes it.
    host_dir = tempfile.mkdtemp(prefix="glm5-sandbox-")
    os.chmod(host_dir, 0o711)
    workdir = os.path.join(host_dir, "work")
    os.mkdir(workdir, 0o700)
    tags.append("host-tempdir")
    if uid is not None:
        os.chown(workdir, uid, gid if gid is not None else uid)
    return workdir, tags, host_dir


def enter_private_scratch(uid: int | None, gid: int | None, scratch_bytes: int) -> None:
    """A mount namespace of the runner's own with fresh size-limited tmpfs on /tmp,
    /var/tmp and /dev/shm, and the working directory in it: what one sample writes
    vanishes with its processes, before the sandbox's next sample starts."""
    linux.unshare(linux.CLONE_NEWNS)
    for directory in SCRATCH_DIRS:
        if os.path.isdir(directory):
            linux.mount("tmpfs", directory, "tmpfs", SCRATCH_FLAGS, scratch_options(scratch_bytes))
    os.mkdir(PRIVATE_WORKDIR, 0o700)
    if uid is not None:
        os.chown(PRIVATE_WORKDIR, uid, gid if gid is not None else uid)


def _enter_minimal_root(namespaces: list[str]) -> list[str]:
    """Pivot into a root that shows only what the interpreter needs; [] if refused.

    /proc: as real root, an empty mount point for init's private /proc. In a user
    namespace the kernel only lets init mount a fresh /proc where one is already fully
    visible in the mount namespace, so the host's is bound there first and the private
    one covers it (as it does without a new root). Without a pid namespace there is no
    private /proc: the host's is shown (the runner needs /proc/self).
    """
    proc_from_host = "user-ns" in namespaces or "pid-ns" not in namespaces
    try:
        minimal_root.build_and_enter(minimal_root.plan_for_this_process(proc_from_host))
    except OSError:
        return []
    return ["minimal-root", "read-only-root"]


def _read_only_host_tree(keep_writable: tuple[str, ...]) -> list[str]:
    try:
        linux.make_tree_read_only("/")
        for path in keep_writable:  # e.g. cgroupfs, for the root supervisor; its files
            linux.make_tree_writable(path)  # stay root-only for the dropped runner
    except OSError:
        return []
    return ["read-only-root"]


def scratch_options(size_bytes: int) -> str:
    """tmpfs options: bytes and inodes both bounded (empty files cost kernel memory too)."""
    inodes = max(1024, size_bytes // 4096)
    return f"size={size_bytes},nr_inodes={inodes},mode=1777"


def resize_scratch(size_bytes: int) -> None:
    """Give the private scratch mounts the sample's own size limit (the runner mounted
    them ahead of the request with the default)."""
    if size_bytes == SandboxLimits().scratch_bytes:
        return
    for directory in SCRATCH_DIRS:
        if os.path.isdir(directory):
            linux.mount(None, directory, None, linux.MS_REMOUNT | SCRATCH_FLAGS,
                        scratch_options(size_bytes))


def mount_private_proc() -> bool:
    """Mount a /proc that shows only the new pid namespace (host pids become invisible)."""
    try:
        linux.mount("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
        return True
    except OSError:
        return False


def remove_files_of_uid(uid: int, directories: tuple[str, ...] = SCRATCH_DIRS) -> int:
    """Delete what ``uid`` left in the shared scratch dirs; returns the count.

    Only needed without a mount namespace, when a sample's /tmp is the host's. Run after
    every process of ``uid`` is dead. Only entries *owned by* ``uid`` are touched: the
    harness's own directories (``prepare_filesystem``) are root's, so this sweep never
    reaches another sandbox of the same uid, e.g. the spare prepared for the next sample.
    Besides the top of each scratch dir, the sweep looks inside every world-writable
    directory below it that is not ``uid``'s (someone else's 0777 directory in /tmp):
    the only other places there where ``uid`` could have created anything (it has no
    groups). Everything goes by descriptor (``remove_entry``): no link is ever followed.
    """
    removed = 0
    for directory in directories:
        try:  # the scratch dirs themselves are the host's configuration, not the sample's
            directory_fd = os.open(directory, _DIRECTORY_FLAGS & ~os.O_NOFOLLOW)
        except OSError:
            continue
        removed += _sweep_world_writable_tree(directory_fd, uid)
    return removed


MAX_SWEEP_DEPTH = 32


def _sweep_world_writable_tree(top_fd: int, uid: int) -> int:
    """Remove ``uid``'s entries below ``top_fd`` (closed here), descending depth first
    into world-writable directories of other owners, one descriptor per level."""
    removed = 0
    levels = [(top_fd, _entry_names(top_fd))]
    while levels:
        directory_fd, names = levels[-1]
        if not names:
            os.close(directory_fd)
            levels.pop()
            continue
        name = names.pop()
        try:
            info = os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
            if info.st_uid == uid:
                remove_entry(directory_fd, name)
                removed += 1
            elif (stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_IWOTH
                  and len(levels) < MAX_SWEEP_DEPTH):
                child = os.open(name, _DIRECTORY_FLAGS, dir_fd=directory_fd)
                levels.append((child, _entry_names(child)))
        except OSError:
            continue
    return removed


def _entry_names(directory_fd: int) -> list[str]:
    try:
        with os.scandir(directory_fd) as entries:
            return [entry.name for entry in entries]
    except OSError:
        return []


# A directory is only ever opened with these: never through a symlink (O_NOFOLLOW), never
# anything but a directory (O_DIRECTORY), never blocking on a FIFO, never inherited.
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def remove_directory(path: str) -> None:
    """Delete ``path``, a directory the harness created, and everything in it; no-op if gone.

    ``path``'s parent is the host's temporary directory, opened by name; below it nothing
    is resolved by path: ``path`` itself and everything inside are reached by descriptor
    and never through a symlink. Should ``path`` have been replaced by a symlink (only
    possible where the sample runs as the harness's own uid), only the link is removed.
    """
    parent, name = os.path.split(os.path.abspath(path))
    parent_fd = os.open(parent, _DIRECTORY_FLAGS & ~os.O_NOFOLLOW)
    try:
        remove_entry(parent_fd, name)
    finally:
        os.close(parent_fd)


def remove_entry(directory_fd: int, name: str) -> None:
    """Delete ``name`` in the directory open as ``directory_fd``: a symlink, file or other
    non-directory is unlinked (a symlink's target is never touched); a directory is
    emptied through descriptors and removed. Nothing of the sample may still be running."""
    try:
        info = os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(name, dir_fd=directory_fd)
        return
    top_fd = _open_directory(directory_fd, name)
    try:
        _remove_contents(top_fd)
    finally:
        os.close(top_fd)
    os.rmdir(name, dir_fd=directory_fd)


def _remove_contents(top_fd: int) -> None:
    """Empty the directory open as ``top_fd``, depth first, without recursion and with one
    descriptor open at a time (a sample can nest directories deeper than any recursion or
    descriptor limit). Going back up opens ``..`` and checks that it is the directory we
    came down from (by device and inode); a mismatch stops the teardown, never redirects it.
    """
    current = os.open(".", _DIRECTORY_FLAGS, dir_fd=top_fd)
    # One level per directory on the way down: (its identity, its name in its parent,
    # its subdirectories still to remove).
    levels = [(_identity(current), "", _unlink_all_but_directories(current))]
    try:
        while True:
            if levels[-1][2]:
                name = levels[-1][2].pop()
                child = _open_directory(current, name)
                os.close(current)
                current = child
                levels.append((_identity(current), name, _unlink_all_but_directories(current)))
                continue
            _, name, _ = levels.pop()
            if not levels:
                return
            parent = os.open("..", _DIRECTORY_FLAGS, dir_fd=current)
            os.close(current)
            current = parent
            if _identity(current) != levels[-1][0]:
                raise OSError(errno.ESTALE, f"a directory moved during teardown: {name!r}")
            os.rmdir(name, dir_fd=current)
    finally:
        os.close(current)


def _unlink_all_but_directories(directory_fd: int) -> list[str]:
    """Unlink every non-directory in ``directory_fd``; returns the subdirectories' names."""
    with os.scandir(directory_fd) as scan:
        entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in scan]
    subdirectories = []
    for name, is_directory in entries:
        if is_directory:
            subdirectories.append(name)
        else:
            os.unlink(name, dir_fd=directory_fd)
    return subdirectories


def _open_directory(directory_fd: int, name: str) -> int:
    """Open the real directory ``name`` (a symlink fails with ELOOP) with owner rwx.

    A root harness never needs the chmod. A harness running as the sample's own uid may
    find that the sample removed its permissions: then the directory is first pinned with
    ``O_PATH`` (which needs no permission on it, and no link is followed), and its mode
    is restored through that descriptor, so the chmod cannot land anywhere else.
    """
    try:
        fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=directory_fd)
    except PermissionError:
        pinned = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=directory_fd)
        try:
            os.chmod(f"/proc/self/fd/{pinned}", stat.S_IRWXU)
            fd = os.open(f"/proc/self/fd/{pinned}", _DIRECTORY_FLAGS & ~os.O_NOFOLLOW)
        finally:
            os.close(pinned)
    mode = os.fstat(fd).st_mode
    if mode & stat.S_IRWXU != stat.S_IRWXU:  # unlinking inside needs write + search
        os.fchmod(fd, stat.S_IMODE(mode) | stat.S_IRWXU)
    return fd


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino
