"""The supervisor: the trusted, still-privileged parent of a sandbox, and its only judge.

Forked from the zygote as a warm spare *before* any request exists: it enters the
namespaces, prepares the filesystem and forks the judge and init, then has init fork the
first sample's runner, and waits. The sandbox then serves up to ``MAX_SAMPLES`` samples in
turn, one runner each: for every request the zygote splices in, it reads the sequence
number, the nonce and the request -- after the sandboxed processes were forked, so they
never hold any of them -- runs the ``StepWatch`` loop, has init kill and reap everything
of the sample (``SWEPT``) and the judge drop the sample's pipes (``IDLE``), and only then
writes the verdict on the one pipe the sandboxed processes never hold. The next runner is
forked by init, which never held a request, so no sample inherits an earlier one's tests.

A sandbox is reused only where everything a sample can leave behind dies with it: its
processes (a pid namespace, swept by init), its files (the runner's own mount namespace
and tmpfs) and its SysV IPC objects (the runner's own ipc namespace). Otherwise -- no
such namespaces, a host working directory -- and after any sample that did not end
cleanly, the sandbox retires after one sample and the zygote's spare takes over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import stat
import struct
import time

from glm5_jax.eval.sandbox_child import cgroups, control_socket, filesystem, linux, reaping
from glm5_jax.eval.sandbox_child.namespaces import enter_namespaces
from glm5_jax.eval.sandbox_child.privileges import confinement_tags, set_oom_score_adj
from glm5_jax.eval.sandbox_child.framing import encode_frame, read_exact, read_frame, write_all
from glm5_jax.eval.sandbox_child.init_process import RUNNER, STOP, SWEPT, become_init
from glm5_jax.eval.sandbox_child.judge import IDLE, JudgeRequest, become_judge
from glm5_jax.eval.sandbox_child.protocol import (
    NONCE_BYTES, Request, ZygoteConfig, encode_limits)
from glm5_jax.eval.sandbox_child.runner import RunnerSetup
from glm5_jax.eval.sandbox_child.step_watch import StepWatch, WatchedPipes

INIT_STOP_GRACE_S = 1.0
MAX_SAMPLES = 64  # samples one sandbox serves before it retires (bounds any slow leak)
SWEEP_TIMEOUT_S = 2.0  # for init's SWEPT and the judge's IDLE after a sample
SEQUENCE = struct.Struct(">Q")  # zygote -> supervisor, before each request's nonce
READY = b"R"  # supervisor -> zygote: this sandbox takes the next request
REUSE_NAMESPACES = ("mount-ns", "pid-ns", "ipc-ns")


@dataclasses.dataclass
class PreparedSandbox:
    """An isolated sandbox: its judge and init, waiting for samples."""

    config: ZygoteConfig
    namespaces: list[str]
    fs_tags: list[str]
    workdir: str
    host_dir: str | None  # host-side workdir to delete afterwards (no mount namespace)
    init_pid: int
    judge_pid: int
    init_control: socket.socket
    judge_control: socket.socket
    lifeline_write: int
    groups: cgroups.SampleCgroups

    @property
    def pid_ns(self) -> bool:
        return "pid-ns" in self.namespaces

    @property
    def reusable(self) -> bool:
        return all(tag in self.namespaces for tag in REUSE_NAMESPACES) \
            and "private-tmp" in self.fs_tags


@dataclasses.dataclass
class SampleChannels:
    """One sample's pipes: the supervisor's ends, and those handed to the judge."""

    pipes: WatchedPipes
    judge_fds: list[int]  # step_read, report_write, call_write, reply_read
    open_fds: set[int] = dataclasses.field(default_factory=set)

    def __post_init__(self) -> None:
        self.open_fds = {*dataclasses.astuple(self.pipes), *self.judge_fds}

    def close(self, fds: tuple[int, ...] | None = None) -> None:
        """Close ``fds`` (default: all) that are still open; never one twice."""
        for fd in list(self.open_fds if fds is None else fds):
            if fd in self.open_fds:
                self.open_fds.discard(fd)
                os.close(fd)


def run_supervisor(config: ZygoteConfig, request_fd: int, response_fd: int, ready_fd: int,
                   zygote_pid: int, cell: int) -> None:
    """Prepare a sandbox, then judge requests until it retires. Never returns."""
    os.setsid()
    linux.set_process_name("glm5-supervisor")
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != zygote_pid:
        os._exit(1)  # the zygote died between fork and prctl
    sandbox, sample, failure = None, None, ""
    try:
        sandbox = _prepare(config, cell, request_fd)
        sample = _start_runner(sandbox)
    except BaseException as exc:  # noqa: BLE001 - reported once a request arrives
        failure = f"sandbox preparation failed: {type(exc).__name__}: {exc}"
    served = 0
    while True:
        header = read_exact(request_fd, SEQUENCE.size + NONCE_BYTES)
        payload = read_frame(request_fd) if header is not None else None
        if payload is None:  # the zygote is shutting down: no more samples here
            break
        sequence, nonce = SEQUENCE.unpack(header[:SEQUENCE.size])[0], header[SEQUENCE.size:]
        started = time.monotonic()
        clean = False
        try:
            if sandbox is None or sample is None:
                raise RuntimeError(failure)
            verdict, clean = _judge(sandbox, sample, Request.from_json(payload))
        except BaseException as exc:  # noqa: BLE001 - any failure here is the sandbox's, not the code's
            reason = failure or f"sandbox supervisor failed: {type(exc).__name__}: {exc}"
            verdict = {"status": "error", "reason": reason, "runtime_s": time.monotonic() - started}
        served += 1
        sample = None
        if clean and served < MAX_SAMPLES and sandbox.reusable:
            try:
                sample = _start_runner(sandbox)
            except BaseException:  # noqa: BLE001 - retire instead
                sample = None
        verdict["nonce"] = nonce.hex()
        verdict["sequence"] = sequence
        if sample is not None:
            write_all(ready_fd, READY)  # before the verdict: the zygote knows before the host
        else:
            if sandbox is not None:  # retiring: nothing of the sample left before the verdict
                _tear_down(sandbox)
                sandbox = None
            os.close(ready_fd)  # the zygote hands the next request to its spare
        write_all(response_fd, encode_frame(json.dumps(verdict).encode()))
        if sample is None:
            break
    if sample is not None:
        sample.close()
    if sandbox is not None:
        _tear_down(sandbox)
    os._exit(0)


def _prepare(config: ZygoteConfig, cell: int, request_fd: int) -> PreparedSandbox:
    try:
        namespaces = enter_namespaces(enter_pid=False) if config.use_namespaces else []
    finally:
        # Only now: a non-dumpable process cannot write its own user-namespace maps.
        # Then same-uid processes can neither ptrace us nor open our descriptors.
        linux.prctl(linux.PR_SET_DUMPABLE, 0)
    groups = cgroups.SampleCgroups()
    if config.uid is not None:  # cgroups are root's to create; the runner inherits ours
        groups = cgroups.prepare_cgroups(cgroups.cgroup_name(config.uid, cell))
        if groups.directories:
            cgroups.join_cgroups(groups)
            set_oom_score_adj(-1000)  # best effort; the runner raises its own
    keep_writable = (cgroups.CGROUP_ROOT,) if groups.directories else ()
    workdir, fs_tags, host_dir = filesystem.prepare_filesystem(namespaces, config.uid, config.gid,
                                                              keep_writable)
    supervisor_pid = os.getpid()
    # The judge first, before the pid namespace exists: in the sample's mount and network
    # namespaces, never in its pid namespace, uid, process group or descriptors.
    judge_control, judge_end = control_socket.control_pair()
    judge_pid = os.fork()
    if judge_pid == 0:
        try:
            judge_control.close()
            os.close(request_fd)
            become_judge(judge_end.fileno(), supervisor_pid)
        finally:
            os._exit(70)
    judge_end.close()
    if config.use_namespaces and _enter_pid_namespace():
        namespaces.append("pid-ns")
    init_control, init_end = control_socket.control_pair()
    lifeline_read, lifeline_write = os.pipe()
    init_pid = os.fork()
    if init_pid == 0:
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            for inherited in (0, 1):  # the zygote's pipes (request and verdict) and ours
                os.dup2(devnull, inherited)
            for fd in (lifeline_write, devnull, request_fd):
                os.close(fd)
            init_control.close()
            judge_control.close()
            become_init(init_end.fileno(), lifeline_read,
                        remount_proc="pid-ns" in namespaces and "mount-ns" in namespaces,
                        pid_namespace="pid-ns" in namespaces,
                        anchor_imports=config.uid is not None)
        finally:
            os._exit(70)
    init_end.close()
    os.close(lifeline_read)
    if "pid-ns" not in namespaces:
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)  # descendants that escape init come here
    return PreparedSandbox(config, namespaces, fs_tags, workdir, host_dir, init_pid, judge_pid,
                           init_control, judge_control, lifeline_write, groups)


def _enter_pid_namespace() -> bool:
    try:
        linux.unshare(linux.CLONE_NEWPID)  # our next child (init) is its pid 1
        return True
    except OSError:
        return False


def _start_runner(sandbox: PreparedSandbox) -> SampleChannels:
    """Fresh pipes for the next sample; init forks its runner with them, now."""
    step_read, step_write = os.pipe()
    report_read, report_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    status_read, status_write = os.pipe()
    call_read, call_write = os.pipe()
    reply_read, reply_write = os.pipe()
    judge_step_read, judge_step_write = os.pipe()
    judge_report_read, judge_report_write = os.pipe()
    if min(step_read, step_write, report_read, report_write) <= 2:
        raise RuntimeError("standard descriptors were closed; pipes would collide with them")
    setup = RunnerSetup(workdir=sandbox.workdir, uid=sandbox.config.uid, gid=sandbox.config.gid,
                        private_tmp="private-tmp" in sandbox.fs_tags,
                        shed_user_namespace="user-ns" in sandbox.namespaces, parent_pid=0,
                        fresh_ipc="ipc-ns" in sandbox.namespaces,
                        ipc_limits="ipc-limits" in sandbox.namespaces)
    runner_fds = [step_read, report_write, stdout_write, stderr_write, call_read, reply_write,
                  status_write]
    try:
        control_socket.send(sandbox.init_control,
                            RUNNER + json.dumps(dataclasses.asdict(setup)).encode(), runner_fds)
    finally:
        for fd in runner_fds:
            os.close(fd)
    pipes = WatchedPipes(step_write, report_read, stdout_read, stderr_read, status_read,
                         judge_step_write, judge_report_read)
    return SampleChannels(pipes, [judge_step_read, judge_report_write, call_write, reply_read])


def _judge(sandbox: PreparedSandbox, sample: SampleChannels,
           request: Request) -> tuple[dict, bool]:
    """The sample's verdict, and whether the sandbox came out of it clean for the next."""
    group_tags = cgroups.apply_cgroup_limits(sandbox.groups, request.limits)
    judge_request = JudgeRequest(request.limits, request.names_from_program)
    control_socket.send(sandbox.judge_control, judge_request.to_json(), sample.judge_fds)
    sample.close(tuple(sample.judge_fds))
    watch = StepWatch(request.steps, request.limits, sample.pipes,
                      runner_preamble=encode_frame(encode_limits(request.limits)))
    clean = False
    try:
        outcome = watch.run()
    finally:
        try:
            clean = sandbox.reusable and _stop_sample(sandbox, sample)
        finally:
            if not clean:  # the caller tears the rest down before it writes the verdict
                _stop_init(sandbox)
            watch.drain_output()
            sample.close()
    tags = [*sandbox.namespaces, *sandbox.fs_tags, *watch.extra_isolation, *group_tags,
            "rlimits", "no-new-privs", "judge-process",
            *confinement_tags("private-tmp" in sandbox.fs_tags)]
    if sandbox.config.uid is not None:
        tags.append(f"uid={sandbox.config.uid}")
    verdict = {
        "status": outcome.status,
        "reason": outcome.reason,
        "runtime_s": time.monotonic() - watch.started,
        "tests_passed": outcome.tests_passed,
        "tests_total": watch.tests_total,
        "test_errors": outcome.test_errors,
        "stdout_tail": watch.stdout.text(),
        "stderr_tail": watch.stderr.text(),
        "stdout_bytes": watch.stdout.total_bytes,
        "stderr_bytes": watch.stderr.total_bytes,
        "isolation": tags,
    }
    return verdict, clean


def _stop_sample(sandbox: PreparedSandbox, sample: SampleChannels) -> bool:
    """End a sample and leave the sandbox clean for the next; False if it could not be.

    The judge gets EOF on its steps and answers ``IDLE`` once it has dropped the sample's
    pipes (a judge still busy in a test is not waited for long: the sandbox retires);
    init kills and reaps every process of the sample and answers ``SWEPT``.
    """
    pipes = sample.pipes
    sample.close((pipes.step_write, pipes.judge_step_write))
    control_socket.send(sandbox.init_control, STOP)
    swept = control_socket.receive_within(sandbox.init_control, SWEEP_TIMEOUT_S) == SWEPT
    idle = control_socket.receive_within(sandbox.judge_control, SWEEP_TIMEOUT_S) == IDLE
    return swept and idle


def _stop_init(sandbox: PreparedSandbox) -> None:
    """End the tree. With a pid namespace, killing its pid 1 kills every member, and
    waitpid returns only once they are all gone; otherwise init first kills the runner's
    group and its children. The judge (outside the sample's pid namespace) is the
    supervisor's own child: killed and reaped here in either case."""
    if sandbox.judge_pid:
        pid, sandbox.judge_pid = sandbox.judge_pid, 0
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if sandbox.init_pid == 0:
        return
    pid, sandbox.init_pid = sandbox.init_pid, 0
    if not sandbox.pid_ns:  # init kills the runner's group and its children first
        try:
            control_socket.send(sandbox.init_control, STOP)
            control_socket.receive_within(sandbox.init_control, INIT_STOP_GRACE_S)
        except OSError:
            pass  # init is gone already
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _tear_down(sandbox: PreparedSandbox) -> None:
    """Stop the tree, sweep the uid where no pid namespace did it, delete host files.

    The files go only once no process of the sample is left, and by descriptor, never
    following a link the sample may have planted (``filesystem.remove_entry``).
    """
    _stop_init(sandbox)
    if not sandbox.pid_ns:  # orphans re-parented to us (a subreaper): kill and reap them
        if sandbox.config.uid is not None:
            reaping.kill_processes_of_uid(sandbox.config.uid)
        reaping.kill_and_reap_children()
    host_dir, sandbox.host_dir = sandbox.host_dir, None
    if host_dir is not None:
        _remove_tree(host_dir)
    if sandbox.config.uid is not None and "private-tmp" not in sandbox.fs_tags:
        filesystem.remove_files_of_uid(sandbox.config.uid)


def _remove_tree(root: str) -> None:
    """Delete the host-side directory even if the sample removed its own permissions.

    ``root`` is the harness's own directory, used as given: no ``realpath`` (a planted
    symlink could redirect it), and everything below it goes by descriptor.
    """
    filesystem.remove_directory(root)


def permission_fixer(root: str):
    """An ``rmtree`` error handler that restores owner permissions *inside* ``root`` only.

    Teardown no longer uses it (``filesystem.remove_directory`` restores permissions
    through descriptors); kept for callers of ``shutil.rmtree`` on harness-owned trees.

    It never touches ``root``'s parent or anything outside the tree, and never follows a
    symlink (``os.chmod`` would): it only chmods real directories found with ``lstat``.
    """
    def retry(function, failed_path: str, exc_info) -> None:
        error = exc_info[1]
        if isinstance(error, FileNotFoundError):
            return
        failed = os.path.abspath(failed_path)
        parent = os.path.dirname(failed)
        inside = failed != root and (parent == root or parent.startswith(root + os.sep))
        if not inside or not stat.S_ISDIR(os.lstat(parent).st_mode):
            raise error
        os.chmod(parent, stat.S_IRWXU)
        if stat.S_ISDIR(os.lstat(failed).st_mode):
            os.chmod(failed, stat.S_IRWXU)
        function(failed_path)

    return retry
