"""The init process: pid 1 of the sample's pid namespace, parent of the runner.

Why a separate process: pid 1 has special signal semantics (signals without a handler
are ignored), so untrusted code should not run as pid 1; and when pid 1 exits the kernel
kills everything left in the namespace -- forks, daemons, zombies, lingering threads --
which is the cleanup we want. Without a pid namespace it is a child subreaper instead,
so escaped descendants still re-parent to it and are killed on the way out.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal

from glm5_jax.eval.sandbox_child import linux
from glm5_jax.eval.sandbox_child.filesystem import mount_private_proc
from glm5_jax.eval.sandbox_child.process_hygiene import close_fds_except
from glm5_jax.eval.sandbox_child.reaping import kill_and_reap_children
from glm5_jax.eval.sandbox_child.runner import RunnerChannels, RunnerSetup, become_runner

PRIVATE_PROC_TAG = "private-proc"


class _Stop(Exception):
    """Raised from the SIGTERM handler: the supervisor wants the sample ended now."""


def _on_terminate(signum: int, frame: object) -> None:
    raise _Stop


def become_init(channels: RunnerChannels, setup: RunnerSetup, status_write: int,
                lifeline_read: int, remount_proc: bool) -> None:
    """Fork the runner, report its wait status on ``status_write``, clean up. Never returns.

    Status lines: "isolation <tag>" for a step only this process can take, then
    "exit <wait status>" once the runner has ended.
    """
    runner_pid = 0
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([lifeline_read], [], [], 0)[0]:
            os._exit(0)  # the supervisor died between fork and prctl
        os.close(lifeline_read)
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        signal.signal(signal.SIGTERM, _on_terminate)
        if remount_proc and mount_private_proc():
            os.write(status_write, f"isolation {PRIVATE_PROC_TAG}\n".encode())
        setup = _with_parent(setup, os.getpid())
        runner_pid = os.fork()
        if runner_pid == 0:
            try:
                os.close(status_write)
                become_runner(channels, setup)
            finally:
                os._exit(70)
        close_fds_except({status_write, 2})
        status = _wait_for(runner_pid)
        os.write(status_write, f"exit {status}\n".encode())
    except _Stop:
        pass
    except BaseException:  # noqa: BLE001 - init must never fall back into caller code
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    kill_and_reap_children(runner_pid)  # the runner leads its own process group
    os._exit(0)


def _with_parent(setup: RunnerSetup, parent_pid: int) -> RunnerSetup:
    return dataclasses.replace(setup, parent_pid=parent_pid)


def _wait_for(runner_pid: int) -> int:
    """Reap children (orphans re-parent here) until the runner itself has exited."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == runner_pid:
            return status
