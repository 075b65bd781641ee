"""The supervisor: the trusted, still-privileged parent of one sample, and its only judge.

Forked from the zygote once per sample. It enters the namespaces, prepares the
filesystem, forks init (which forks the runner), runs the ``StepWatch`` loop, tears the
whole process tree down, and only then writes the verdict -- with the host's nonce --
on the one pipe the sandboxed processes never hold.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import time

from glm5_jax.eval.sandbox_child import isolation, linux
from glm5_jax.eval.sandbox_child.framing import encode_frame, write_all
from glm5_jax.eval.sandbox_child.init_process import become_init
from glm5_jax.eval.sandbox_child.protocol import Request
from glm5_jax.eval.sandbox_child.runner import RunnerChannels, RunnerSetup
from glm5_jax.eval.sandbox_child.step_watch import Outcome, StepWatch, WatchedPipes

INIT_STOP_GRACE_S = 1.0


def supervise(request: Request, nonce: bytearray, response_fd: int, zygote_pid: int) -> None:
    """Judge one sample and write its verdict to ``response_fd``. Never returns."""
    started = time.monotonic()
    try:
        verdict = _judge(request, nonce, zygote_pid)
    except BaseException as exc:  # noqa: BLE001 - any failure here is the sandbox's, not the code's
        verdict = {"status": "error", "reason": f"sandbox supervisor failed: "
                                                f"{type(exc).__name__}: {exc}",
                   "runtime_s": time.monotonic() - started}
    verdict["nonce"] = bytes(nonce).hex()
    write_all(response_fd, encode_frame(json.dumps(verdict).encode()))
    os._exit(0)


def _judge(request: Request, nonce: bytearray, zygote_pid: int) -> dict:
    os.setsid()
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != zygote_pid:
        os._exit(1)  # the zygote died between fork and prctl
    linux.prctl(linux.PR_SET_DUMPABLE, 0)  # same-uid processes cannot ptrace us or read our fds
    namespaces = isolation.enter_namespaces() if request.use_namespaces else []
    workdir, fs_tags, host_dir = isolation.prepare_filesystem(
        namespaces, request.limits, request.uid, request.gid)
    pid_ns = "pid-ns" in namespaces
    try:
        outcome, watch = _run_tree(request, nonce, namespaces, fs_tags, workdir)
    finally:
        if request.uid is not None and not pid_ns:
            isolation.kill_processes_of_uid(request.uid)
        if host_dir is not None:
            _remove_tree(host_dir)
    tags = [*namespaces, *fs_tags, *watch.extra_isolation, "rlimits", "no-new-privs"]
    if request.uid is not None:
        tags.append(f"uid={request.uid}")
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


def _run_tree(request: Request, nonce: bytearray, namespaces: list[str], fs_tags: list[str],
              workdir: str) -> tuple[Outcome, StepWatch]:
    step_read, step_write = os.pipe()
    report_read, report_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    status_read, status_write = os.pipe()
    lifeline_read, lifeline_write = os.pipe()
    channels = RunnerChannels(step_read, report_write, stdout_write, stderr_write)
    setup = RunnerSetup(
        limits=request.limits, workdir=workdir, uid=request.uid, gid=request.gid,
        private_tmp="private-tmp" in fs_tags, shed_user_namespace="user-ns" in namespaces,
        parent_pid=0)
    pid_ns = "pid-ns" in namespaces
    init_pid = os.fork()
    if init_pid == 0:
        try:
            nonce[:] = bytes(len(nonce))  # the sandboxed tree never holds the host's nonce
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)  # the zygote's request pipe
            os.dup2(devnull, 1)  # the verdict pipe
            for fd in (step_write, report_read, stdout_read, stderr_read, status_read,
                       lifeline_write, devnull):
                os.close(fd)
            become_init(channels, setup, status_write, lifeline_read,
                        remount_proc=pid_ns and "mount-ns" in namespaces)
        finally:
            os._exit(70)
    for fd in (step_read, report_write, stdout_write, stderr_write, status_write, lifeline_read):
        os.close(fd)
    watch = StepWatch(request.steps, request.limits,
                      WatchedPipes(step_write, report_read, stdout_read, stderr_read, status_read))
    try:
        outcome = watch.run()
    finally:
        _end_init(init_pid, pid_ns)
        watch.drain_output()
        for fd in (step_write, report_read, stdout_read, stderr_read, status_read, lifeline_write):
            os.close(fd)
    return outcome, watch


def _end_init(init_pid: int, pid_ns: bool) -> None:
    """Tear the tree down. With a pid namespace, killing its pid 1 kills every member, and
    waitpid returns only once they are all gone; otherwise init kills its descendants."""
    if pid_ns:
        os.kill(init_pid, signal.SIGKILL)
        os.waitpid(init_pid, 0)
        return
    os.kill(init_pid, signal.SIGTERM)
    give_up = time.monotonic() + INIT_STOP_GRACE_S
    while time.monotonic() < give_up:
        if os.waitpid(init_pid, os.WNOHANG)[0]:
            return
        time.sleep(0.002)
    os.kill(init_pid, signal.SIGKILL)
    os.waitpid(init_pid, 0)


def _remove_tree(path: str) -> None:
    """Delete the host-side workdir even if the sample removed its own permissions."""
    def make_writable_and_retry(function, failed_path, _exc_info) -> None:
        parent = os.path.dirname(failed_path)
        os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(failed_path) and not os.path.islink(failed_path):
            os.chmod(failed_path, stat.S_IRWXU)
        function(failed_path)

    shutil.rmtree(path, onerror=make_writable_and_retry)
