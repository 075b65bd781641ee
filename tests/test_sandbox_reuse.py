"""One sandbox serves many samples: nothing of a sample reaches the next one.

A sandbox (supervisor, init, judge, namespaces, minimal root) is reused for the next
sample of the same worker when the sample ended cleanly; each sample still gets a fresh
runner, forked by init (which never held a request), in a mount and ipc namespace of its
own. These tests run two samples back to back on one worker, check that the sandbox was
indeed reused (the same supervisor), and that the second sees none of the first's files,
processes, SysV IPC objects or tests.
"""

from __future__ import annotations

import hashlib
import os
import secrets

import pytest
from test_sandbox_host_reach import needs_namespaces
from test_sandbox_hostile import LIMITS, POLICY, descendants, wait_until

from glm5_jax.eval.pool import SandboxPool
from glm5_jax.eval.sandbox_child.supervisor import MAX_SAMPLES

pytestmark = needs_namespaces

LEAVE_EVERYTHING_BEHIND = """
import ctypes, os, time
for path in ("/tmp/left-by-a", "/var/tmp/left-by-a", "/dev/shm/left-by-a", "left-by-a"):
    with open(path, "w") as handle:
        handle.write("a")
libc = ctypes.CDLL(None, use_errno=True)
shm_id = libc.shmget(0, 4096, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
assert shm_id >= 0, ctypes.get_errno()
if os.fork() == 0:  # a daemon: its own session, re-parented to init
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
os.wait()

def candidate():
    return shm_id >= 0
"""

# Sample B: everything it can find of sample A. Its memory is searched for A's test marker
# by hash (so the marker itself never exists in B): every occurrence of the prefix, with
# the bytes after it, hashed and compared.
LOOK_FOR_A = """
import ctypes, hashlib, os

def scratch():
    return {d: sorted(os.listdir(d)) for d in ("/tmp", "/var/tmp", "/dev/shm", ".")}

def sysv_shm():
    with open("/proc/sysvipc/shm") as handle:
        return len(handle.read().splitlines()) - 1  # the header line

def other_processes():
    mine = os.getpid()
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, mine))

def marker_in_memory(prefix, length, digest):
    found = 0
    with open("/proc/self/maps") as handle:
        regions = [line.split() for line in handle]
    for fields in regions:
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if not fields[1].startswith("r") or (len(fields) > 5 and fields[5].startswith("[v")):
            continue
        data = ctypes.string_at(start, end - start)
        at = data.find(prefix)
        while at >= 0:
            if hashlib.sha256(data[at:at + length]).hexdigest() == digest:
                found += 1
            at = data.find(prefix, at + 1)
    return found
"""


def zygote_children(pool: SandboxPool) -> set[int]:
    (zygote,) = pool.helper_pids()
    with open(f"/proc/{zygote}/task/{zygote}/children") as handle:
        return {int(pid) for pid in handle.read().split()}


@pytest.fixture()
def one_worker():
    with SandboxPool(workers=1, limits=LIMITS, policy=POLICY) as pool:
        assert pool.run("x = 1", ("assert x == 1",)).passed  # start the helper
        yield pool


def test_a_clean_sample_leaves_the_sandbox_serving_the_next(one_worker):
    supervisors = zygote_children(one_worker)
    assert len(supervisors) == 2  # the sandbox serving and its spare
    for value in range(5):
        result = one_worker.run(f"def f():\n    return {value}\n", (f"assert f() == {value}",))
        assert result.passed, result
    assert zygote_children(one_worker) == supervisors  # reused: no new supervisor


def test_nothing_of_a_sample_reaches_the_next_in_the_same_sandbox(one_worker):
    marker = "QZXJ" + secrets.token_hex(14)
    digest = hashlib.sha256(marker.encode()).hexdigest()
    supervisors = zygote_children(one_worker)
    first = one_worker.run(LEAVE_EVERYTHING_BEHIND, (f"assert candidate() or {marker!r}",))
    assert first.passed, first
    second = one_worker.run(LOOK_FOR_A, (
        "assert scratch() == {'/tmp': ['sandbox'], '/var/tmp': [], '/dev/shm': [], '.': []}, "
        "scratch()",
        "assert sysv_shm() == 0, sysv_shm()",
        "assert other_processes() == [], other_processes()",
        f"assert marker_in_memory(b'QZXJ', {len(marker)}, {digest!r}) == 0",
    ))
    assert second.passed, second
    assert zygote_children(one_worker) == supervisors  # both ran in the same sandbox


def test_the_memory_search_finds_a_marker_that_is_there(one_worker):
    """The check above can fail: the same search finds a marker the sample itself holds."""
    marker = "QZXJ" + secrets.token_hex(14)
    digest = hashlib.sha256(marker.encode()).hexdigest()
    result = one_worker.run(LOOK_FOR_A + f"held = {marker!r}\n", (
        f"assert marker_in_memory(b'QZXJ', {len(marker)}, {digest!r}) >= 1",))
    assert result.passed, result


def test_a_runner_stuck_past_the_timeout_is_swept_and_the_sandbox_serves_on(one_worker):
    supervisors = zygote_children(one_worker)
    stuck = one_worker.run("def f():\n    while True:\n        pass\n", ("f()",))
    assert stuck.status.value == "timeout", stuck
    assert one_worker.run("x = 2", ("assert x == 2",)).passed
    assert zygote_children(one_worker) == supervisors


def test_a_judge_still_busy_after_the_timeout_retires_its_sandbox(one_worker):
    supervisors = zygote_children(one_worker)
    stuck = one_worker.run("x = 1", ("while True:\n    pass",))  # the test itself never ends
    assert stuck.status.value == "timeout", stuck
    assert one_worker.run("x = 2", ("assert x == 2",)).passed
    now = zygote_children(one_worker)
    assert len(now) == 2 and not supervisors <= now  # the spare took over; a new spare


def test_a_sandbox_retires_after_its_last_sample(one_worker):
    supervisors = zygote_children(one_worker)
    for _ in range(MAX_SAMPLES):
        assert one_worker.run("x = 3", ("assert x == 3",)).passed
    assert wait_until(lambda: zygote_children(one_worker) != supervisors, 5.0)
    (zygote,) = one_worker.helper_pids()
    assert wait_until(lambda: len(descendants(zygote)) == 8, 5.0), descendants(zygote)
    assert os.path.exists(f"/proc/{zygote}")
