"""Making sure nothing of a sample outlives it, with or without a pid namespace."""

from __future__ import annotations

import os
import signal
import time


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
