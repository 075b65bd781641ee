"""Hostile code: never reported as passed, never reaches the host, never breaks the pool.

Each case in hostile_cases/cases.py (the host) and hostile_cases/judge_cases.py (the
judgment) runs in one shared pool; after each we check the
host side: canary file and directory intact, nothing written to the host's scratch
dirs, no connection reached the host's listeners, no process of the pool's own sandbox
uids alive (other pools, e.g. another xdist worker's, hold other uids and are not ours
to judge), nothing below the helpers but their one prepared (idle, still root) sandbox
each (supervisor, init, runner and judge), and the same helpers still pass a good sample.

The canary lives where a sample could reach it if isolation failed: outside the
scratch dirs the sandbox replaces, on a path every user can traverse (checked by
reading it as another user before any attack runs), wherever the checkout is.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.policy import IsolationPolicy
from glm5_jax.eval.pool import SandboxJob, SandboxPool
from glm5_jax.eval.results import Status
from glm5_jax.eval.sandbox_child.filesystem import SCRATCH_DIRS
from hostile_cases.cases import CASES, limits_for
from hostile_cases.judge_cases import JUDGE_CASES

POLICY = IsolationPolicy()
LIMITS = SandboxLimits(timeout_s=1.5, memory_bytes=256 << 20)
BENIGN = SandboxJob("def f():\n    return 1", ("assert f() == 1",))
NOBODY = 65534
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def traversable_by_others(directory: str) -> bool:
    """Every directory from / down to ``directory`` lets other users pass (o+x)."""
    path = os.path.realpath(directory)
    while True:
        if not os.stat(path).st_mode & 0o001:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


def hidden_by_the_sandbox(directory: str) -> bool:
    """Under a scratch dir that the sandbox replaces with its own tmpfs."""
    path = os.path.realpath(directory)
    scratch = [os.path.realpath(d) for d in SCRATCH_DIRS]
    return any(path == d or path.startswith(d + os.sep) for d in scratch)


def canary_parent() -> str:
    """Where to put the canary: beside the tests if a sample could see it there, else a
    host directory that every sandbox sees (a 0700 checkout or one under /tmp is not)."""
    for candidate in (TESTS_DIR, "/var/lib", "/srv", "/opt", os.path.expanduser("~")):
        if (os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK)
                and not hidden_by_the_sandbox(candidate) and traversable_by_others(candidate)):
            return candidate
    raise RuntimeError("no writable directory outside the scratch dirs that other users can "
                       "traverse: the canary attacks would test nothing")


class HostTargets:
    """Things on the host that the hostile programs aim at, and checks that they are intact."""

    def __init__(self) -> None:
        token = uuid.uuid4().hex
        # Not under /tmp nor in a private checkout: the canary must be visible to the
        # sandbox for the attacks on it to mean anything.
        self.canary_dir = os.path.join(canary_parent(), f".glm5-hostile-canary-{token}")
        os.mkdir(self.canary_dir, 0o755)
        os.chmod(self.canary_dir, 0o755)
        self.canary = os.path.join(self.canary_dir, "canary.txt")
        with open(self.canary, "w") as handle:
            handle.write("canary")
        os.chmod(self.canary, 0o644)
        self.canary_mode = os.stat(self.canary).st_mode
        self.marker = f"glm5-hostile-{token}"
        self.scratch_modes = {d: os.stat(d).st_mode for d in ("/tmp", "/var/tmp", "/dev/shm")}
        self.secret_name, self.secret = "GLM5_HOSTILE_SECRET", f"secret-{token}"
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.tcp.setblocking(False)
        self.abstract_name = f"\0glm5-hostile-{token}"
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.abstract_name)
        self.unix.listen()
        self.unix.setblocking(False)

    def substitutions(self) -> dict:
        return {"canary": self.canary, "canary_dir": self.canary_dir, "host_pid": os.getpid(),
                "port": self.tcp.getsockname()[1], "abstract_socket": self.abstract_name,
                "secret_name": self.secret_name, "secret": self.secret, "marker": self.marker}

    def assert_reachable_unsandboxed(self) -> None:
        """Before any attack: a process outside the sandbox, as a user other than the
        canary's owner (as the sample is), can read it; otherwise the attacks are vacuous."""
        if os.geteuid() == 0:
            read = subprocess.run(["cat", self.canary], user=NOBODY, group=NOBODY,
                                  extra_groups=[], capture_output=True, text=True, check=False)
            assert read.returncode == 0 and read.stdout == "canary", (self.canary, read.stderr)
        else:  # the sample runs as our own uid (in a user namespace)
            with open(self.canary) as handle:
                assert handle.read() == "canary"
        assert not hidden_by_the_sandbox(self.canary_dir), self.canary_dir

    def assert_intact(self) -> None:
        with open(self.canary) as handle:
            assert handle.read() == "canary"
        assert os.stat(self.canary).st_mode == self.canary_mode
        assert sorted(os.listdir(self.canary_dir)) == ["canary.txt"]
        for directory, mode in self.scratch_modes.items():
            assert not os.path.exists(os.path.join(directory, self.marker))
            assert os.stat(directory).st_mode == mode
        for listener in (self.tcp, self.unix):
            with pytest.raises(BlockingIOError):
                listener.accept()  # nobody ever connected

    def close(self) -> None:
        self.tcp.close()
        self.unix.close()
        for name in os.listdir(self.canary_dir):
            os.remove(os.path.join(self.canary_dir, name))
        os.rmdir(self.canary_dir)


@pytest.fixture(scope="module")
def host_targets():
    targets = HostTargets()
    targets.assert_reachable_unsandboxed()
    os.environ[targets.secret_name] = targets.secret
    yield targets
    del os.environ[targets.secret_name]
    targets.close()


@pytest.fixture(scope="module")
def pool(host_targets):
    with SandboxPool(workers=2, limits=LIMITS, policy=POLICY) as sandbox_pool:
        assert all(r.passed for r in sandbox_pool.map([BENIGN, BENIGN]))  # start both helpers
        if os.geteuid() == 0:  # the uid checks below judge these two, never an empty set
            assert len(set(sandbox_pool.held_uids())) == 2
        yield sandbox_pool


def sandbox_uid_processes(uids) -> list[int]:
    """Live processes running as one of ``uids`` (a pool's held sandbox uids)."""
    uids = set(uids)
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/status") as handle:
                lines = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        uid = int(lines["Uid"].split()[0])
        if uid in uids and not lines["State"].strip().startswith("Z"):
            found.append(int(name))
    return found


def descendants(pid: int) -> list[int]:
    parents = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def wait_until(condition, timeout_s: float = 2.0) -> bool:
    give_up = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.01)
    return True


def test_there_are_enough_distinct_cases():
    every = CASES + JUDGE_CASES
    assert len({case.name for case in every}) == len(every) >= 40
    assert all("passed" not in case.statuses for case in every)


@pytest.mark.parametrize("hostile", CASES + JUDGE_CASES, ids=lambda case: case.name)
def test_hostile_program_is_contained(hostile, pool, host_targets):
    helpers = pool.helper_pids()
    values = host_targets.substitutions()
    result = pool.run(hostile.program.format(**values),
                      tuple(test.format(**values) for test in hostile.tests),
                      limits=limits_for(hostile, LIMITS))

    assert not result.passed, result
    assert result.status.value in hostile.statuses, result
    assert result.stdout_bytes <= LIMITS.output_limit_bytes + (1 << 20)
    assert len(result.stdout_tail) <= LIMITS.output_tail_bytes
    host_targets.assert_intact()
    assert sandbox_uid_processes(pool.held_uids()) == []
    # Each helper keeps two sandboxes, the one serving and its spare, each with exactly a
    # supervisor, init, the judge and an idle runner: nothing of the sample is left.
    assert wait_until(lambda: all(len(descendants(pid)) == 8 for pid in helpers), 15.0), \
        {pid: descendants(pid) for pid in helpers}
    assert pool.run(BENIGN.program, BENIGN.tests).passed
    assert pool.helper_pids() == helpers  # no helper had to be restarted


def test_hostile_programs_running_concurrently_leave_good_samples_alone(pool, host_targets):
    values = host_targets.substitutions()
    jobs = []
    for hostile in CASES:
        jobs.append(SandboxJob(hostile.program.format(**values),
                               tuple(test.format(**values) for test in hostile.tests),
                               limits_for(hostile, LIMITS)))
        jobs.append(BENIGN)
    results = pool.map(jobs)
    hostile_results, benign_results = results[0::2], results[1::2]
    assert not any(r.passed for r in hostile_results)
    assert all(r.passed for r in benign_results), [r for r in benign_results if not r.passed]
    host_targets.assert_intact()
    assert sandbox_uid_processes(pool.held_uids()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can drop to a sandbox uid")
def test_hostile_code_runs_unprivileged_and_without_network(pool):
    result = pool.run("import os, socket\nuid = os.getuid()\n"
                      "interfaces = [name for _, name in socket.if_nameindex()]",
                      ("assert uid != 0", "assert interfaces == ['lo']"))
    assert result.passed, result
    assert any(tag.startswith("uid=") for tag in result.isolation)
    expected = {"net-ns", "pid-ns", "mount-ns", "read-only-root", "private-tmp", "private-proc"}
    assert expected <= set(result.isolation)
    assert result.status is Status.PASSED


def interpreter_for(uid: int) -> str | None:
    """A python3 that ``uid`` can execute (the venv's may live under a private /root)."""
    for candidate in (shutil.which("python3"), "/usr/bin/python3", "/usr/local/bin/python3"):
        if not candidate:
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; assert sys.version_info >= (3, 10)"],
                user=uid, group=uid, extra_groups=[], capture_output=True, cwd="/", check=False)
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    return None


def copy_for_unprivileged_host(destination: str) -> str:
    """Copy what the unprivileged host imports (the sandbox package and the cases) to
    ``destination``, readable by everyone: the checkout itself may be private (0700, or
    under /root). Returns the path of the host script in the copy."""
    package = os.path.join(os.path.dirname(TESTS_DIR), "glm5_jax")
    shutil.copytree(os.path.join(package, "eval"), os.path.join(destination, "glm5_jax", "eval"),
                    ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copytree(os.path.join(TESTS_DIR, "hostile_cases"),
                    os.path.join(destination, "tests", "hostile_cases"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for directory, subdirs, files in os.walk(destination):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    return os.path.join(destination, "tests", "hostile_cases", "unprivileged_host.py")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start the host as another user")
def test_unprivileged_host_contains_every_case_through_user_namespaces():
    python = interpreter_for(NOBODY)
    if python is None:
        pytest.skip("no python3 >= 3.10 that an unprivileged user can execute")
    targets = HostTargets()
    copy = tempfile.mkdtemp(prefix=".glm5-unprivileged-host-", dir=canary_parent())
    try:
        targets.assert_reachable_unsandboxed()
        os.chown(targets.canary_dir, NOBODY, NOBODY)  # the canary belongs to the host user,
        os.chown(targets.canary, NOBODY, NOBODY)      # as it would for a non-root host
        script = copy_for_unprivileged_host(copy)
        values = {k: v for k, v in targets.substitutions().items() if k != "host_pid"}
        completed = subprocess.run(
            [python, script, json.dumps(values)],
            user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, text=True,
            cwd="/", timeout=300, check=False)
        assert completed.returncode == 0, completed.stderr[-3000:]
        report = json.loads(completed.stdout.splitlines()[-1])
        targets.assert_intact()
    finally:
        targets.close()
        shutil.rmtree(copy)
    assert report["benign_passed"] == [True, True]
    if "user-ns" not in report["isolation"]:
        pytest.skip("this kernel forbids unprivileged user namespaces: weaker fallback only")
    assert {"net-ns", "pid-ns", "mount-ns", "private-tmp"} <= set(report["isolation"])
    passed = {name: outcome for name, outcome in report["cases"].items() if outcome[0]}
    assert passed == {}
    assert len(report["cases"]) == len(CASES)


# Contained by the uid drop alone, when the kernel refuses namespaces to a root host.
WITHOUT_NAMESPACES = ("fork_bomb", "memory_bomb", "huge_stdout", "overwrite_canary",
                      "delete_canary", "rmtree_canary_dir", "chmod_canary",
                      "create_file_beside_canary", "regain_root", "read_host_environment",
                      "read_host_environ_through_proc", "kill_host_process", "kill_parent",
                      "kill_every_process_it_can", "read_parent_memory", "os_exit_0_inside_test",
                      "forge_reports_on_every_fd", "zombie_children", "daemon_escapes_session",
                      "unset_parent_death_signal")


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop needs a root host")
def test_root_host_without_namespaces_still_contains_what_the_uid_drop_covers(host_targets):
    cases = [case for case in CASES if case.name in WITHOUT_NAMESPACES]
    assert len(cases) == len(WITHOUT_NAMESPACES)
    values = host_targets.substitutions()
    policy = IsolationPolicy(use_namespaces=False)
    with SandboxPool(workers=2, limits=LIMITS, policy=policy) as weak_pool:
        results = weak_pool.map([SandboxJob(case.program.format(**values),
                                            tuple(t.format(**values) for t in case.tests),
                                            limits_for(case, LIMITS))
                                 for case in cases])
        litter = weak_pool.run(f"open('/tmp/{host_targets.marker}', 'w').write('x')")
        assert weak_pool.run(BENIGN.program, BENIGN.tests).passed
        uids = weak_pool.held_uids()
        assert len(uids) == 2
        assert sandbox_uid_processes(uids) == []  # judged while the uids are still ours
    assert {case.name: r.reason for case, r in zip(cases, results, strict=True) if r.passed} == {}
    assert litter.passed and "host-tempdir" in litter.isolation  # it could write /tmp ...
    host_targets.assert_intact()  # ... but the file was removed with the sample


FORK_MEMORY_BOMB = """\
import os
children = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        hoard = b"x" * (200 << 20)  # each child stays under its own address-space limit
        os._exit(0)
    children.append(pid)
statuses = [os.waitpid(pid, 0)[1] for pid in children]
"""


def test_forked_memory_bomb_is_bounded_as_a_group(pool):
    limits = SandboxLimits(timeout_s=15.0, memory_bytes=LIMITS.memory_bytes)
    result = pool.run(FORK_MEMORY_BOMB, ("assert statuses == [0] * 6, statuses",), limits=limits)
    if "cgroup-memory" not in result.isolation:
        pytest.skip("no usable memory cgroup here: a tree can hold max_processes x "
                    "memory_bytes (documented in SANDBOX.md)")
    assert not result.passed and "AssertionError" in result.reason, result
    assert sandbox_uid_processes(pool.held_uids()) == []


def test_cpu_share_of_a_sample_is_capped(pool):
    spinners = ("import os, time\nchildren = []\nfor _ in range(2):\n    pid = os.fork()\n"
                "    if pid == 0:\n        end = time.monotonic() + 0.8\n"
                "        while time.monotonic() < end:\n            pass\n        os._exit(0)\n"
                "    children.append(pid)\n"
                "cpu = sum(os.wait4(pid, 0)[2].ru_utime for pid in children)")
    result = pool.run(spinners, ("assert cpu < 1.2, cpu",))
    if "cgroup-cpu" not in result.isolation:
        pytest.skip("no usable cpu cgroup here: a sample may use up to max_processes cores")
    assert result.passed, result  # two spinning processes got one core between them
