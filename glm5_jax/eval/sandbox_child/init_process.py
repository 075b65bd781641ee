"""The init process: pid 1 of the sandbox's pid namespace, parent of each sample's runner.

Why a separate process: pid 1 has special signal semantics (signals without a handler
are ignored), so untrusted code should not run as pid 1; and when pid 1 exits the kernel
kills everything left in the namespace -- forks, daemons, zombies, lingering threads --
which is the cleanup we want. Without a pid namespace it is a child subreaper instead,
so escaped descendants still re-parent to it and are killed on the way out.

It lives as long as its sandbox and serves one sample at a time over a control socket:
``RUNNER`` (with the sample's pipe ends) forks the runner; its wait status goes on that
sample's status pipe; ``STOP`` (or the runner's end) kills every other process of the
namespace and reaps them all, then it answers ``SWEPT``. So nothing of one sample is
alive when the next one's runner starts.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time

from glm5_jax.eval.sandbox_child import control_socket, linux
from glm5_jax.eval.sandbox_child.filesystem import mount_private_proc
from glm5_jax.eval.sandbox_child.process_hygiene import anchor_import_paths, close_fds_except
from glm5_jax.eval.sandbox_child.reaping import kill_and_reap_children
from glm5_jax.eval.sandbox_child.runner import RunnerChannels, RunnerSetup, become_runner

PRIVATE_PROC_TAG = "private-proc"
RUNNER = b"runner:"  # + the RunnerSetup as JSON; descriptors: RunnerChannels + status pipe
STOP = b"stop"
SWEPT = b"swept"
MAX_SWEEP_ROUNDS = 1000


def become_init(control_fd: int, lifeline_read: int, remount_proc: bool,
                pid_namespace: bool, anchor_imports: bool) -> None:
    """Serve runners until the control socket closes. Never returns.

    ``anchor_imports``: the runners drop to a uid that may not traverse the interpreter's
    tree; init opens it once (``anchor_import_paths``) and every runner inherits that.
    """
    try:
        linux.set_process_name("glm5-init")
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([lifeline_read], [], [], 0)[0]:
            os._exit(0)  # the supervisor died between fork and prctl
        os.close(lifeline_read)
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        private_proc = remount_proc and mount_private_proc()
        close_fds_except({control_fd, 2})
        anchor_fds = tuple(anchor_import_paths()) if anchor_imports else ()
        control = socket.socket(fileno=control_fd)
        wake_read, wake_write = os.pipe()
        for fd in (wake_read, wake_write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select through wake_read
        while True:
            message, fds = control_socket.receive(control)
            if not message.startswith(RUNNER) or len(fds) != 7:
                break  # hung up (or a harness bug): the namespace dies with us
            status_write = fds[6]
            if private_proc:
                os.write(status_write, f"isolation {PRIVATE_PROC_TAG}\n".encode())
            setup = RunnerSetup(**{**json.loads(message[len(RUNNER):]),
                                   "parent_pid": os.getpid(), "anchor_fds": anchor_fds})
            runner_pid = _fork_runner(RunnerChannels(*fds[:6]), setup, keep={
                control.fileno(), wake_read, wake_write, status_write})
            for fd in fds[:6]:
                os.close(fd)
            _serve_sample(control, wake_read, runner_pid, status_write)
            os.close(status_write)
            _sweep(pid_namespace, runner_pid)
            control_socket.send(control, SWEPT)
    except BaseException:  # noqa: BLE001 - init must never fall back into caller code
        pass
    os._exit(0)


def _fork_runner(channels: RunnerChannels, setup: RunnerSetup, keep: set[int]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in keep:
                os.close(fd)
            become_runner(channels, setup)
        finally:
            os._exit(70)
    return pid


def _serve_sample(control: socket.socket, wake_read: int, runner_pid: int,
                  status_write: int) -> None:
    """Reap as children end (orphans re-parent here); report the runner's wait status;
    return on ``STOP``, or on the supervisor's hang-up."""
    while True:
        readable = select.select([control, wake_read], [], [])[0]
        if wake_read in readable:
            _drain(wake_read)
            for pid, status in _reap_ready():
                if pid == runner_pid:
                    os.write(status_write, f"exit {status}\n".encode())
        if control in readable:
            message = control.recv(control_socket.MAX_MESSAGE_BYTES)
            if message != STOP:
                raise ConnectionError("the supervisor hung up")
            return


def _reap_ready() -> list[tuple[int, int]]:
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _sweep(pid_namespace: bool, runner_pid: int) -> None:
    """Kill every process of the sample and reap it. In a pid namespace ``kill(-1)`` from
    its init reaches every member but init; repeated until none is left (a fork racing
    the first round is caught by the next). Without one: the runner's group and every
    child (orphans re-parented here, as the subreaper)."""
    if not pid_namespace:
        kill_and_reap_children(runner_pid)
        return
    for _ in range(MAX_SWEEP_ROUNDS):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            break  # nobody left but init
        try:
            os.waitpid(-1, 0)  # one of them ending (orphans re-parent here as they do)
        except ChildProcessError:
            time.sleep(0.001)  # the dying are not ours yet
    else:
        raise RuntimeError("processes kept appearing in the sample's pid namespace")
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
