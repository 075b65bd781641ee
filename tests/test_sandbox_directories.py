"""The sandbox's host-side directories (no mount namespace): who owns them, how they go.

Without a mount namespace a sample's working directory is on the host's /tmp, and its
teardown deletes files there as root. Two things must hold:

- the harness's own directories are never the sample uid's, so the sweep of that uid's
  /tmp entries (run when a sample ends) cannot reach the spare sandbox prepared, under
  the same uid, for the worker's next sample;
- deletion goes by descriptor and never follows a link the sample could have planted.
"""

from __future__ import annotations

import os
import resource
import stat
import tempfile

import pytest

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.policy import IsolationPolicy
from glm5_jax.eval.pool import SandboxJob, SandboxPool
from glm5_jax.eval.sandbox_child import filesystem
from hostile_cases.cases import CASES, limits_for
from test_sandbox_hostile import BENIGN, HostTargets, sandbox_uid_processes

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop needs a root host")


def build_tree(root: str, outside: str) -> None:
    """Files, nested dirs, and links out of the tree: to a directory, to a file, and a
    subdirectory renamed with a link to ``outside`` left in its place."""
    os.makedirs(os.path.join(root, "a", "b", "c"))
    with open(os.path.join(root, "a", "b", "c", "file"), "w") as handle:
        handle.write("x")
    os.mkfifo(os.path.join(root, "a", "fifo"))
    os.symlink(outside, os.path.join(root, "to-dir"))
    os.symlink(os.path.join(outside, "keep"), os.path.join(root, "a", "to-file"))
    os.rename(os.path.join(root, "a", "b"), os.path.join(root, "a", "b-moved"))
    os.symlink(outside, os.path.join(root, "a", "b"))


def make_outside(parent: str) -> str:
    outside = os.path.join(parent, "outside")
    os.mkdir(outside, 0o755)
    with open(os.path.join(outside, "keep"), "w") as handle:
        handle.write("keep")
    return outside


def assert_outside_intact(outside: str) -> None:
    assert sorted(os.listdir(outside)) == ["keep"]
    with open(os.path.join(outside, "keep")) as handle:
        assert handle.read() == "keep"
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o755


def test_remove_directory_deletes_links_never_their_targets(tmp_path):
    outside = make_outside(str(tmp_path))
    root = os.path.join(tmp_path, "harness")
    os.mkdir(root)
    build_tree(root, outside)
    filesystem.remove_directory(root)
    filesystem.remove_directory(root)  # already gone: a no-op
    assert sorted(os.listdir(tmp_path)) == ["outside"]
    assert_outside_intact(outside)


def test_remove_directory_given_a_symlink_removes_only_the_link(tmp_path):
    outside = make_outside(str(tmp_path))
    link = os.path.join(tmp_path, "harness")
    os.symlink(outside, link)
    filesystem.remove_directory(link)
    assert not os.path.lexists(link)
    assert_outside_intact(outside)


def test_remove_directory_handles_nesting_deeper_than_recursion_and_descriptor_limits(tmp_path):
    root = os.path.join(tmp_path, "harness")
    os.mkdir(root)
    depth = 1200  # deeper than the recursion limit (1000) and the descriptor limit below
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    pid = os.fork()
    if pid == 0:  # with only a few descriptors to spare: one per level would run out
        status = 1
        try:
            highest = max(int(name) for name in os.listdir("/proc/self/fd"))
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
            filesystem.remove_directory(root)
            status = 0
        finally:
            os._exit(status)
    assert os.waitpid(pid, 0)[1] == 0
    assert os.listdir(tmp_path) == []


@needs_root
def test_as_the_samples_own_uid_permissions_the_sample_removed_are_restored_inside_only():
    """The non-root fallback deletes as the sample's own uid: it must chmod only inside."""
    parent = tempfile.mkdtemp(prefix="glm5-directories-test-")
    try:
        os.chmod(parent, 0o755)
        outside = make_outside(parent)
        os.chown(outside, NOBODY, NOBODY)
        root = os.path.join(parent, "harness")
        os.mkdir(root)
        build_tree(root, outside)
        for directory, _, _ in os.walk(root):
            os.chown(directory, NOBODY, NOBODY, follow_symlinks=False)
        for path in (os.path.join(root, "a", "b-moved", "c"), os.path.join(root, "a", "b-moved"),
                     os.path.join(root, "a")):
            os.chmod(path, 0)  # unreadable, unsearchable, unwritable
        os.chmod(parent, 0o777)  # so that nobody may remove harness/ itself
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
                filesystem.remove_directory(root)
                status = 0
            finally:
                os._exit(status)
        assert os.waitpid(pid, 0)[1] == 0
        assert not os.path.lexists(root)
        os.chmod(parent, 0o755)
        assert_outside_intact(outside)
    finally:
        for directory, _, _ in os.walk(parent):
            os.chmod(directory, 0o755)
        filesystem.remove_directory(parent)


@needs_root
def test_the_uid_sweep_never_touches_harness_owned_directories(tmp_path):
    scratch = os.path.join(tmp_path, "scratch")
    os.mkdir(scratch, 0o1777)
    outside = make_outside(str(tmp_path))
    # The harness's directory (root's, 0711) with the sample's work/ inside, as prepared.
    harness = os.path.join(scratch, "glm5-sandbox-spare")
    os.mkdir(harness, 0o711)
    os.mkdir(os.path.join(harness, "work"), 0o700)
    os.chown(os.path.join(harness, "work"), NOBODY, NOBODY)
    # What a sample of that uid left at the top of the scratch dir.
    os.mkdir(os.path.join(scratch, "left-dir"))
    build_tree(os.path.join(scratch, "left-dir"), outside)
    os.symlink(outside, os.path.join(scratch, "left-link"))
    with open(os.path.join(scratch, "left-file"), "w") as handle:
        handle.write("x")
    for name in ("left-dir", "left-link", "left-file"):
        os.chown(os.path.join(scratch, name), NOBODY, NOBODY, follow_symlinks=False)
    assert filesystem.remove_files_of_uid(NOBODY, (scratch,)) == 3
    assert os.listdir(scratch) == ["glm5-sandbox-spare"]
    assert os.listdir(harness) == ["work"]
    assert_outside_intact(outside)


@needs_root
def test_without_namespaces_the_harness_directory_is_root_and_only_work_is_the_samples():
    workdir, tags, host_dir = filesystem.prepare_filesystem([], NOBODY, NOBODY)
    try:
        assert tags == ["host-tempdir"] and os.path.dirname(workdir) == host_dir
        harness, work = os.lstat(host_dir), os.lstat(workdir)
        assert (harness.st_uid, stat.S_IMODE(harness.st_mode)) == (0, 0o711)
        assert (work.st_uid, stat.S_IMODE(work.st_mode)) == (NOBODY, 0o700)
    finally:
        filesystem.remove_directory(host_dir)
    assert not os.path.lexists(host_dir)


# The regression: a correct program that sleeps and then writes and reads a relative
# file. The running sample's teardown once swept every /tmp entry of its uid, including
# the working directory of the spare sandbox prepared (same uid) for the next sample,
# into which the spare's runner had already chdir'ed: every sample after the first failed.
# (The tests run in the judge, so the program reads its file back for them.)
SLOW_WRITER = SandboxJob("import time\ntime.sleep(0.3)\nopen('out.txt', 'w').write('x')\n"
                         "def written():\n    return open('out.txt').read()",
                         ("assert written() == 'x'",))


@needs_root
def test_without_namespaces_every_sample_through_one_worker_keeps_its_workdir():
    marker = f"glm5-directories-{os.getpid()}"
    litter = SandboxJob(f"open('/tmp/{marker}', 'w').write('x')\n" + SLOW_WRITER.program,
                        SLOW_WRITER.tests)
    with SandboxPool(workers=1, policy=IsolationPolicy(use_namespaces=False)) as pool:
        results = [pool.run(job.program, job.tests) for job in [SLOW_WRITER, litter] * 3]
        assert sandbox_uid_processes(pool.held_uids()) == []
    assert [r.passed for r in results] == [True] * 6, [r.reason for r in results]
    assert all("host-tempdir" in r.isolation for r in results)
    assert not os.path.lexists(f"/tmp/{marker}")  # the sweep still removes what it should


SYMLINK_SWAP = next(case for case in CASES if case.name == "symlink_swap_of_workdir")


@needs_root
def test_without_namespaces_a_symlink_swap_is_torn_down_without_following_it():
    targets = HostTargets()
    try:
        targets.assert_reachable_unsandboxed()
        values = targets.substitutions()
        program = SYMLINK_SWAP.program.format(**values)
        limits = limits_for(SYMLINK_SWAP, SandboxLimits(timeout_s=5.0))
        with SandboxPool(workers=1, limits=limits,
                         policy=IsolationPolicy(use_namespaces=False)) as pool:
            results = [pool.run(program, SYMLINK_SWAP.tests) for _ in range(2)]
            benign = pool.run(BENIGN.program, BENIGN.tests)
            assert sandbox_uid_processes(pool.held_uids()) == []
        targets.assert_intact()  # the links' target survived teardown, as root
        for name in (targets.marker, targets.marker + "-dir"):
            assert not os.path.lexists(os.path.join("/tmp", name))
        for result in results:
            assert result.status.value in SYMLINK_SWAP.statuses, result
            assert "left symlinks" in result.reason, result  # it got through every swap
            assert "host-tempdir" in result.isolation
            work = result.stdout_tail.splitlines()[0]
            assert not os.path.lexists(os.path.dirname(work)), work  # harness dir deleted
        assert benign.passed, benign
    finally:
        targets.close()
