"""The isolation steps, each a small function the helper processes call in order.

Which process calls what (see ../SANDBOX.md for the whole picture):
  supervisor: ``enter_namespaces``, ``prepare_filesystem`` (still privileged)
  init:       ``mount_private_proc`` (it is pid 1 of the new pid namespace)
  runner:     ``close_fds_except``, ``anchor_import_paths``, ``scrub_environment``,
              ``apply_rlimits``, ``drop_privileges`` -- all before any untrusted code.
Steps that the kernel refuses are skipped and simply not listed in the isolation tags,
except the privilege drop, which is mandatory once asked for.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import stat
import sys
import tempfile
import time

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.sandbox_child import linux

PRIVATE_WORKDIR = "/tmp/sandbox"
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

_NAMESPACES = (  # (tag, clone flag), in the order they are entered
    ("mount-ns", linux.CLONE_NEWNS),
    ("net-ns", linux.CLONE_NEWNET),
    ("pid-ns", linux.CLONE_NEWPID),
    ("ipc-ns", linux.CLONE_NEWIPC),
    ("uts-ns", linux.CLONE_NEWUTS),
)


def enter_namespaces() -> list[str]:
    """Unshare every namespace the kernel allows; returns the tags of those entered.

    Not root: first try a user namespace, which grants the capabilities the others need
    (many kernels allow this to unprivileged users; some distributions forbid it).
    The pid namespace applies to children only: the next fork becomes its pid 1.
    """
    tags = []
    if os.geteuid() != 0:
        try:
            _enter_user_namespace()
            tags.append("user-ns")
        except OSError:
            return tags
    for tag, flag in _NAMESPACES:
        try:
            linux.unshare(flag)
            tags.append(tag)
        except OSError:
            pass
    return tags


def _enter_user_namespace() -> None:
    uid, gid = os.geteuid(), os.getegid()
    linux.unshare(linux.CLONE_NEWUSER)
    with open("/proc/self/setgroups", "w") as handle:
        handle.write("deny")
    with open("/proc/self/uid_map", "w") as handle:
        handle.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as handle:
        handle.write(f"0 {gid} 1")


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
        workdir = host_dir = tempfile.mkdtemp(prefix="glm5-sandbox-")
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


def close_fds_except(keep: set[int]) -> None:
    """Close every inherited descriptor not in ``keep`` (0, 1 and 2 are always kept)."""
    start = 0
    for fd in sorted(keep | {0, 1, 2}):
        if fd > start:
            os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, max(start + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0]))


def anchor_import_paths() -> list[int]:
    """Reach the stdlib through open directory descriptors; returns the descriptors.

    The interpreter may live where the unprivileged uid cannot traverse (e.g. pyenv
    under a 0700 /root). A directory opened while still privileged stays usable through
    /proc/self/fd/N after the drop, so imports keep working -- both ``sys.path`` and the
    ``__path__`` of packages already imported, whose submodules load from there --
    while nothing else in that private tree becomes reachable by name.
    """
    anchors: dict[str, str] = {}
    fds: list[int] = []
    for entry in sys.path:
        root = os.path.abspath(entry)
        if root in anchors or not os.path.isdir(root):
            continue
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        fds.append(fd)
        anchors[root] = f"/proc/self/fd/{fd}"
    sys.path[:] = list(anchors.values())
    sys.path_importer_cache.clear()
    for module in list(sys.modules.values()):
        search_path = getattr(module, "__path__", None)
        if isinstance(search_path, list):
            search_path[:] = [_reanchor(path, anchors) for path in search_path]
    return fds


def _reanchor(path: str, anchors: dict[str, str]) -> str:
    for root in sorted(anchors, key=len, reverse=True):
        if path == root or path.startswith(root + os.sep):
            return anchors[root] + path[len(root):]
    return path


def scrub_environment(workdir: str, private_tmp: bool) -> None:
    """Replace the environment with a minimal one: no host secrets can be inherited."""
    os.environ.clear()
    os.environ.update({
        "PATH": SAFE_PATH,
        "HOME": workdir,
        "TMPDIR": "/tmp" if private_tmp else workdir,
        "LANG": "C.UTF-8",
    })


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


def kill_processes_of_uid(uid: int, max_rounds: int = 200) -> int:
    """SIGKILL every live process whose real or effective uid is ``uid``; returns the count.

    Only meaningful for a uid reserved for sandboxes: such processes cannot change uid
    again (no privileges, no_new_privs), so repeating the scan until it finds none
    also catches children forked while it ran.
    """
    killed = 0
    for _ in range(max_rounds):
        victims = [pid for pid in _live_pids_of_uid(uid) if pid != os.getpid()]
        if not victims:
            return killed
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.001)
    return killed


def _live_pids_of_uid(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as handle:
                status = handle.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith(("Z", "X")):
            continue  # already dead; its parent reaps it
        real, effective = fields.get("Uid", "-1 -1").split()[:2]
        if uid in (int(real), int(effective)):
            pids.append(int(name))
    return pids


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


def kill_and_reap_children(process_group: int = 0) -> None:
    """SIGKILL every child (and ``process_group``) and reap until none is left.

    For a child subreaper: orphans of the killed keep re-parenting to this process
    while it runs, so it loops until waitpid reports no children at all. No zombie of
    the sample outlives this call, even without a pid namespace.
    """
    if process_group > 0:
        try:
            os.killpg(process_group, signal.SIGKILL)
        except OSError:
            pass
    while True:
        for pid in _children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _children() -> list[int]:
    children: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as handle:
                children.extend(int(pid) for pid in handle.read().split())
    except OSError:
        pass
    return children
