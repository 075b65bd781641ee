"""The sample's view of the filesystem: read-only host tree, private scratch space.

Done by the supervisor (and init for /proc) while still privileged, before the runner
exists; undone by the kernel when the mount namespace dies.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.sandbox_child import linux

PRIVATE_WORKDIR = "/tmp/sandbox"
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def prepare_filesystem(namespaces: list[str], uid: int | None, gid: int | None,
                       keep_writable: tuple[str, ...] = ()) -> tuple[str, list[str], str | None]:
    """Make the working directory; returns (workdir, tags, host directory to remove).

    With a mount namespace the whole host tree becomes read-only for the sample and
    /tmp, /var/tmp and /dev/shm become fresh size-limited tmpfs mounts that vanish with
    the namespace, so nothing the sample writes can outlive it (``keep_writable`` mounts
    excepted). Without one, the workdir is a host temporary directory that the
    supervisor deletes afterwards.
    """
    tags = []
    if "mount-ns" in namespaces:
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        try:
            linux.make_tree_read_only("/")
            tags.append("read-only-root")
            for path in keep_writable:  # e.g. cgroupfs, for the root supervisor; its files
                linux.make_tree_writable(path)  # stay root-only for the dropped runner
        except OSError:
            pass
        for directory in SCRATCH_DIRS:
            if os.path.isdir(directory):
                linux.mount("tmpfs", directory, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
                            f"size={SandboxLimits().scratch_bytes},mode=1777")
        tags.append("private-tmp")
        workdir, host_dir = PRIVATE_WORKDIR, None
        os.mkdir(workdir, 0o700)
    else:
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


def resize_scratch(size_bytes: int) -> None:
    """Give the private scratch mounts the sample's own size limit (they were mounted
    ahead of the request with the default)."""
    if size_bytes == SandboxLimits().scratch_bytes:
        return
    for directory in SCRATCH_DIRS:
        if os.path.isdir(directory):
            linux.mount(None, directory, None,
                        linux.MS_REMOUNT | linux.MS_NOSUID | linux.MS_NODEV,
                        f"size={size_bytes},mode=1777")


def mount_private_proc() -> bool:
    """Mount a /proc that shows only the new pid namespace (host pids become invisible)."""
    try:
        linux.mount("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
        return True
    except OSError:
        return False


def remove_files_of_uid(uid: int, directories: tuple[str, ...] = SCRATCH_DIRS) -> int:
    """Delete what ``uid`` left at the top of the shared scratch dirs; returns the count.

    Only needed without a mount namespace, when a sample's /tmp is the host's. Run after
    every process of ``uid`` is dead, so nothing can race it; symlinks are removed, never
    followed, and directories go through ``shutil.rmtree``'s descriptor-based walk.
    """
    removed = 0
    for directory in directories:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
                if info.st_uid != uid:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                removed += 1
            except OSError:
                continue
    return removed
