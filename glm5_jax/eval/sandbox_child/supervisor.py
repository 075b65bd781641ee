"""The supervisor: the trusted, still-privileged parent of one sample, and its only judge.

Forked from the zygote as a warm spare *before* its request exists: it enters the
namespaces, prepares the filesystem and forks init (which forks the runner), then waits.
When the zygote splices a request in, it reads the nonce and the request -- after the
sandboxed processes were forked, so they never hold either -- runs the ``StepWatch``
loop, tears the whole process tree down, and only then writes the verdict on the one
pipe the sandboxed processes never hold.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import time

from glm5_jax.eval.sandbox_child import cgroups, filesystem, linux, reaping
from glm5_jax.eval.sandbox_child.namespaces import enter_namespaces
from glm5_jax.eval.sandbox_child.privileges import confinement_tags, set_oom_score_adj
from glm5_jax.eval.sandbox_child.framing import encode_frame, read_exact, read_frame, write_all
from glm5_jax.eval.sandbox_child.init_process import become_init
from glm5_jax.eval.sandbox_child.judge import JudgeChannels, JudgeRequest, become_judge
from glm5_jax.eval.sandbox_child.protocol import (
    NONCE_BYTES, Request, ZygoteConfig, encode_limits)
from glm5_jax.eval.sandbox_child.runner import RunnerChannels, RunnerSetup
from glm5_jax.eval.sandbox_child.step_watch import StepWatch, WatchedPipes

INIT_STOP_GRACE_S = 1.0


@dataclasses.dataclass
class PreparedSandbox:
    """An isolated, idle process tree waiting for its sample."""

    config: ZygoteConfig
    namespaces: list[str]
    fs_tags: list[str]
    host_dir: str | None  # host-side workdir to delete afterwards (no mount namespace)
    init_pid: int
    judge_pid: int
    pipes: WatchedPipes
    lifeline_write: int
    groups: cgroups.SampleCgroups

    @property
    def pid_ns(self) -> bool:
        return "pid-ns" in self.namespaces


def run_supervisor(config: ZygoteConfig, request_fd: int, response_fd: int, zygote_pid: int,
                   sequence: int) -> None:
    """Prepare a sandbox, wait for a request, judge it, write the verdict. Never returns."""
    os.setsid()
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != zygote_pid:
        os._exit(1)  # the zygote died between fork and prctl
    sandbox, failure = None, ""
    try:
        sandbox = _prepare(config, sequence, request_fd)
    except BaseException as exc:  # noqa: BLE001 - reported once a request arrives
        failure = f"sandbox preparation failed: {type(exc).__name__}: {exc}"
    nonce = read_exact(request_fd, NONCE_BYTES)
    payload = read_frame(request_fd) if nonce is not None else None
    if payload is None:  # the zygote is shutting down: no sample for this spare
        if sandbox is not None:
            _tear_down(sandbox)
        os._exit(0)
    started = time.monotonic()
    try:
        if sandbox is None:
            raise RuntimeError(failure)
        verdict = _judge(sandbox, Request.from_json(payload))
    except BaseException as exc:  # noqa: BLE001 - any failure here is the sandbox's, not the code's
        if sandbox is not None:
            _tear_down(sandbox)
        reason = failure or f"sandbox supervisor failed: {type(exc).__name__}: {exc}"
        verdict = {"status": "error", "reason": reason, "runtime_s": time.monotonic() - started}
    verdict["nonce"] = nonce.hex()
    verdict["sequence"] = sequence
    write_all(response_fd, encode_frame(json.dumps(verdict).encode()))
    os._exit(0)


def _prepare(config: ZygoteConfig, sequence: int, request_fd: int) -> PreparedSandbox:
    try:
        namespaces = enter_namespaces() if config.use_namespaces else []
    finally:
        # Only now: a non-dumpable process cannot write its own user-namespace maps.
        # Then same-uid processes can neither ptrace us nor open our descriptors.
        linux.prctl(linux.PR_SET_DUMPABLE, 0)
    groups = cgroups.SampleCgroups()
    if config.uid is not None:  # cgroups are root's to create; the runner inherits ours
        groups = cgroups.prepare_cgroups(cgroups.cgroup_name(config.uid, sequence))
        if groups.directories:
            cgroups.join_cgroups(groups)
            set_oom_score_adj(-1000)  # best effort; the runner raises its own
    keep_writable = (cgroups.CGROUP_ROOT,) if groups.directories else ()
    workdir, fs_tags, host_dir = filesystem.prepare_filesystem(namespaces, config.uid, config.gid,
                                                              keep_writable)
    step_read, step_write = os.pipe()
    report_read, report_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    status_read, status_write = os.pipe()
    lifeline_read, lifeline_write = os.pipe()
    call_read, call_write = os.pipe()
    reply_read, reply_write = os.pipe()
    if min(step_read, step_write, report_read, report_write) <= 2:
        raise RuntimeError("standard descriptors were closed; pipes would collide with them")
    channels = RunnerChannels(step_read, report_write, stdout_write, stderr_write,
                              call_read, reply_write)
    setup = RunnerSetup(workdir=workdir, uid=config.uid, gid=config.gid,
                        private_tmp="private-tmp" in fs_tags,
                        shed_user_namespace="user-ns" in namespaces, parent_pid=0)
    init_pid = os.fork()
    if init_pid == 0:
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            for inherited in (0, 1):  # the zygote's pipes (request and verdict) and ours
                os.dup2(devnull, inherited)
            for fd in (step_write, report_read, stdout_read, stderr_read, status_read,
                       lifeline_write, devnull, request_fd, call_write, reply_read):
                os.close(fd)
            become_init(channels, setup, status_write, lifeline_read,
                        remount_proc="pid-ns" in namespaces and "mount-ns" in namespaces)
        finally:
            os._exit(70)
    for fd in (step_read, report_write, stdout_write, stderr_write, status_write, lifeline_read,
               call_read, reply_write):
        os.close(fd)
    # Forked after init: inside the sample's namespaces (pid 2 of its pid namespace, so it
    # dies with init), but never in the runner's uid, process group or descriptors.
    judge_step_read, judge_step_write = os.pipe()
    judge_report_read, judge_report_write = os.pipe()
    supervisor_pid = os.getpid()
    judge_pid = os.fork()
    if judge_pid == 0:
        try:
            become_judge(JudgeChannels(judge_step_read, judge_report_write, call_write,
                                       reply_read), supervisor_pid)
        finally:
            os._exit(70)
    for fd in (judge_step_read, judge_report_write, call_write, reply_read):
        os.close(fd)
    if "pid-ns" not in namespaces:
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)  # descendants that escape init come here
    pipes = WatchedPipes(step_write, report_read, stdout_read, stderr_read, status_read,
                         judge_step_write, judge_report_read)
    return PreparedSandbox(config, namespaces, fs_tags, host_dir, init_pid, judge_pid, pipes,
                           lifeline_write, groups)


def _judge(sandbox: PreparedSandbox, request: Request) -> dict:
    if "private-tmp" in sandbox.fs_tags:
        filesystem.resize_scratch(request.limits.scratch_bytes)
    group_tags = cgroups.apply_cgroup_limits(sandbox.groups, request.limits)
    judge_request = JudgeRequest(request.limits, request.names_from_program)
    watch = StepWatch(request.steps, request.limits, sandbox.pipes,
                      runner_preamble=encode_frame(encode_limits(request.limits)),
                      judge_preamble=encode_frame(judge_request.to_json()))
    try:
        outcome = watch.run()
    finally:
        _stop_init(sandbox)
        watch.drain_output()
        _tear_down(sandbox)
    tags = [*sandbox.namespaces, *sandbox.fs_tags, *watch.extra_isolation, *group_tags,
            "rlimits", "no-new-privs", "judge-process",
            *confinement_tags("private-tmp" in sandbox.fs_tags)]
    if sandbox.config.uid is not None:
        tags.append(f"uid={sandbox.config.uid}")
    return {
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


def _stop_init(sandbox: PreparedSandbox) -> None:
    """End the tree. With a pid namespace, killing its pid 1 kills every member, and
    waitpid returns only once they are all gone; otherwise init kills its descendants.
    The judge is the supervisor's own child: killed and reaped here in either case."""
    if sandbox.judge_pid:
        pid, sandbox.judge_pid = sandbox.judge_pid, 0
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if sandbox.init_pid == 0:
        return
    pid, sandbox.init_pid = sandbox.init_pid, 0
    if sandbox.pid_ns:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return
    os.kill(pid, signal.SIGTERM)
    give_up = time.monotonic() + INIT_STOP_GRACE_S
    while time.monotonic() < give_up:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.002)
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
