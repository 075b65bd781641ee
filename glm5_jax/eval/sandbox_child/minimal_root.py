"""The sample's root directory: a fresh tmpfs that shows only what the interpreter needs.

Built by the supervisor in its new mount namespace, before init and the runner exist.
A small tmpfs holds directories and mount points; onto them go read-only, nosuid, nodev
bind mounts of the standard library, of the directories of the shared objects the
interpreter has loaded (libc, libpython, ...), of the interpreter binary, its program
loader and the loader's cache. Python package directories inside any of those
(``site-packages``, ``dist-packages``) are covered with empty read-only mounts. ``/dev``
holds only null, zero, full, random and urandom. Then ``pivot_root`` makes this the
namespace's root and the host's tree is detached: no path leads back to the checkout,
site-packages, /home, /root, /run (or any host unix socket), /etc, /opt, /srv...

Directories made only to lead to a bound path are mode 0111 (pass through, not list), so
e.g. /root exists when the interpreter lives under it, but shows no names. The sandbox
helper modules are imported before the fork (the zygote preloads them), so the package
itself need not, and does not, appear.

Planning reads the host tree; every source is pinned with an ``O_PATH`` descriptor
before the first mount, so the build's own mounts (the new root is built on /tmp)
cannot redirect it. The plan is made once per worker, when the zygote imports this
module, and made again in a sandbox only if the interpreter has since loaded a shared
object from a directory the plan does not show.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import sys
import sysconfig

from glm5_jax.eval.sandbox_child import linux

STAGING_DIR = "/tmp"  # where the new root is built (in this mount namespace only)
PASS_THROUGH_MODE = 0o111
ROOT_OPTIONS = "size=1m,nr_inodes=4096,mode=0755"
DEV_OPTIONS = "size=64k,nr_inodes=64,mode=0755"
DEVICES = ("null", "zero", "full", "random", "urandom")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))
MOUNT_POINTS = ("/proc", "/tmp", "/var/tmp")  # filled later: private /proc, scratch tmpfs
# Read by the dynamic loader (library lookup) and by setlocale for LANG=C.UTF-8.
SYSTEM_FILES = ("/etc/ld.so.cache", "/usr/lib/locale/C.utf8")
PACKAGE_DIRS = ("site-packages", "dist-packages")
_MAPPED_SHARED_OBJECT = re.compile(r" (/[^\n]*\.so(?:\.[0-9.]+)?)$", re.MULTILINE)
_BIND_ATTRIBUTES = linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
_DEVICE_ATTRIBUTES = linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NOEXEC
MAX_SYMLINKS = 40
# Read once, when the zygote imports this module, not in every sandbox.
STDLIB_DIRS = tuple(sorted({os.path.realpath(sysconfig.get_paths()[key])
                            for key in ("stdlib", "platstdlib")}))


@dataclasses.dataclass
class RootPlan:
    """What to create in the new root, all as paths inside it."""

    directories: list[str] = dataclasses.field(default_factory=list)  # pass-through dirs
    symlinks: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, target)
    binds: list[str] = dataclasses.field(default_factory=list)  # real host paths, shown as is
    masks: list[str] = dataclasses.field(default_factory=list)  # package dirs to cover
    proc_from_host: bool = False  # bind the host's /proc under the private one (see below)


def shown_host_paths() -> list[str]:
    """Host paths the sample needs: the standard library (the entries of sys.path inside
    it: the helpers run with -S, so there are no others), the interpreter and its program
    loader, the directories of every shared object this process has loaded, and the
    loader's cache. Never a package directory (site-packages, dist-packages)."""
    paths = [entry for entry in sys.path if os.path.isabs(entry) and os.path.exists(entry)
             and _covered(os.path.realpath(entry), list(STDLIB_DIRS))]
    paths += [*_INTERPRETER_FILES, *sorted(loaded_shared_object_dirs()), *SYSTEM_FILES]
    return [path for path in paths if os.path.exists(path) and not _inside_package_dir(path)]


def plan_for_this_process(proc_from_host: bool) -> RootPlan:
    """The plan for what this process has loaded: the one made at import if it shows the
    directory of every shared object loaded since (all that can have changed), else a
    fresh one."""
    if _PLAN_AT_IMPORT is not None and loaded_shared_object_dirs() <= _PLAN_AT_IMPORT[0]:
        plan = _PLAN_AT_IMPORT[1]
    else:
        plan = plan_root(shown_host_paths(), proc_from_host=False)
    return dataclasses.replace(plan, proc_from_host=proc_from_host)


def loaded_shared_object_dirs() -> set[str]:
    with open("/proc/self/maps") as maps:
        return {os.path.dirname(path) for path in _MAPPED_SHARED_OBJECT.findall(maps.read())}


def program_interpreter(executable: str) -> str | None:
    """The ELF program loader (PT_INTERP) of a 64-bit little-endian executable, if any."""
    try:
        with open(executable, "rb") as handle:
            header = handle.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
                return None
            phoff, = struct.unpack_from("<Q", header, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
            for index in range(phnum):
                handle.seek(phoff + index * phentsize)
                entry = handle.read(phentsize)
                kind, = struct.unpack_from("<I", entry, 0)
                if kind == 3:  # PT_INTERP
                    offset, = struct.unpack_from("<Q", entry, 8)
                    size, = struct.unpack_from("<Q", entry, 0x20)
                    handle.seek(offset)
                    return handle.read(size).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def plan_root(shown: list[str], proc_from_host: bool) -> RootPlan:
    """Resolve each shown path on the host as the kernel would, recording the symlinks and
    directories that lead to it; bind the fewest real paths that cover them all."""
    plan = RootPlan(proc_from_host=proc_from_host)
    targets = []
    for path in shown:
        targets.append(_resolve(path, plan))
    for real in sorted(set(targets), key=len):
        if not _covered(real, plan.binds):
            plan.binds.append(real)
    plan.directories = [d for d in dict.fromkeys(plan.directories)
                        if not _covered(d, plan.binds)]
    plan.symlinks = [(p, t) for p, t in dict.fromkeys(plan.symlinks)
                     if not _covered(p, plan.binds)]
    for bound in plan.binds:
        if os.path.isdir(bound):
            plan.masks += _package_dirs_under(bound)
    return plan


def build_and_enter(plan: RootPlan) -> None:
    """Build ``plan`` on a tmpfs at STAGING_DIR and pivot into it; the host tree is then
    detached. On an error before the pivot the staging mount is removed and the error
    raised (the caller may fall back); after the pivot there is no way back."""
    pinned = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in plan.binds}
    pinned_devices = {name: os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC)
                      for name in DEVICES}
    pinned_proc = os.open("/proc", os.O_PATH | os.O_CLOEXEC) if plan.proc_from_host else None
    try:
        linux.mount("tmpfs", STAGING_DIR, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, ROOT_OPTIONS)
        try:
            _populate(STAGING_DIR, plan, pinned, pinned_devices, pinned_proc)
            os.chdir(STAGING_DIR)
            linux.pivot_root(".", ".")
        except BaseException:
            os.chdir("/")
            linux.detach_mount(STAGING_DIR)
            raise
    finally:
        for fd in (*pinned.values(), *pinned_devices.values(),
                   *([pinned_proc] if pinned_proc is not None else [])):
            os.close(fd)
    try:
        linux.detach_mount(".")  # the old root, stacked on the new one by pivot_root(".", ".")
        os.chdir("/")
    except OSError as exc:  # not OSError: there is no falling back from here
        raise RuntimeError(f"the sample's root is half built: {exc}") from exc


def _populate(root: str, plan: RootPlan, pinned: dict[str, int], devices: dict[str, int],
              proc: int | None) -> None:
    def inside(path: str) -> str:
        return root + path

    for directory in (*MOUNT_POINTS, "/dev"):
        os.makedirs(inside(directory), 0o755, exist_ok=True)
    os.chmod(inside("/var"), PASS_THROUGH_MODE)
    for directory in sorted(plan.directories, key=len):
        if not os.path.isdir(inside(directory)):
            os.mkdir(inside(directory), PASS_THROUGH_MODE)
    for path, target in plan.symlinks:
        os.makedirs(inside(os.path.dirname(path)), PASS_THROUGH_MODE, exist_ok=True)
        os.symlink(target, inside(path))
    for real in plan.binds:
        _bind(pinned[real], inside(real), os.path.isdir(real))
    for package_dir in plan.masks:
        linux.mount("tmpfs", inside(package_dir), "tmpfs",
                    linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
                    "size=4k,nr_inodes=1,mode=0555")
    linux.make_tree_read_only(root, _BIND_ATTRIBUTES)  # the root tmpfs and every bind in it
    linux.mount("tmpfs", inside("/dev"), "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, DEV_OPTIONS)
    for name, fd in devices.items():
        _bind(fd, inside(f"/dev/{name}"), False)
    for name, target in DEV_LINKS:
        os.symlink(target, inside(f"/dev/{name}"))
    os.mkdir(inside("/dev/shm"))
    linux.make_tree_read_only(inside("/dev"), _DEVICE_ATTRIBUTES)  # devices stay devices
    if proc is not None:
        linux.bind_mount(f"/proc/self/fd/{proc}", inside("/proc"))


def _bind(fd: int, target: str, is_directory: bool) -> None:
    if is_directory:
        os.makedirs(target, PASS_THROUGH_MODE, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), PASS_THROUGH_MODE, exist_ok=True)
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o400))
    linux.bind_mount(f"/proc/self/fd/{fd}", target)


def _resolve(path: str, plan: RootPlan) -> str:
    """The real host path ``path`` leads to. Symlinks met on the way are recorded as
    symlinks to create, directories passed through as directories to create."""
    pending = path.split("/")[::-1]
    real, links = "/", 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            real = os.path.dirname(real)
            continue
        candidate = os.path.join(real, name)
        if os.path.islink(candidate):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(40, f"too many levels of symbolic links: {path}")
            target = os.readlink(candidate)
            plan.symlinks.append((candidate, target))
            pending.extend(target.split("/")[::-1])
            if target.startswith("/"):
                real = "/"
            continue
        if any(part not in ("", ".") for part in pending):
            plan.directories.append(candidate)
        real = candidate
    return real


def _covered(path: str, bound: list[str]) -> bool:
    return any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound)


def _inside_package_dir(path: str) -> bool:
    return any(part in PACKAGE_DIRS for part in path.split("/"))


def _package_dirs_under(directory: str) -> list[str]:
    """``site-packages``/``dist-packages`` in ``directory``, in its ``python*``
    subdirectories, and in ``lib/python*`` (one listing of each directory)."""
    found = []
    for parent in [directory, *_python_dirs(directory),
                   *_python_dirs(os.path.join(directory, "lib"))]:
        for name in PACKAGE_DIRS:
            path = os.path.join(parent, name)
            if os.path.isdir(path) and not os.path.islink(path):
                found.append(path)
    return sorted(found)


def _python_dirs(directory: str) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return [entry.path for entry in entries if entry.name.startswith("python")
                    and entry.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _interpreter_files() -> list[str]:
    executable = os.path.realpath(sys.executable)
    loader = program_interpreter(executable)
    return [executable, loader] if loader else [executable]


def _plan_at_import() -> tuple[set[str], RootPlan] | None:
    try:
        shown = shown_host_paths()
        return set(shown), plan_root(shown, proc_from_host=False)
    except OSError:  # e.g. no /proc: planned in each sandbox instead (and refused there)
        return None


# Made once, when the zygote imports this module, for every sandbox it forks.
_INTERPRETER_FILES = _interpreter_files()
_PLAN_AT_IMPORT = _plan_at_import()
