"""Sandbox uid slots: never shared between pools in different processes, whatever their
environment, and never taken from a lock directory that someone else controls."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from glm5_jax.eval import uid_slots
from glm5_jax.eval.policy import IsolationPolicy

POLICY = IsolationPolicy()
HOLD_A_SLOT = """\
import sys
from glm5_jax.eval.uid_slots import LOCK_DIR, acquire_uid_slot
slot = acquire_uid_slot({base}, {count})
print(LOCK_DIR, slot.uid, flush=True)
sys.stdin.read()  # hold it until the test closes our stdin
"""


def run_with_tmpdir(code: str, tmpdir: str) -> str:
    env = {**os.environ, "TMPDIR": tmpdir}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_lock_dir_does_not_follow_tmpdir(tmp_path):
    other = run_with_tmpdir("from glm5_jax.eval.uid_slots import LOCK_DIR; print(LOCK_DIR)",
                            str(tmp_path))
    assert other == uid_slots.LOCK_DIR
    assert not other.startswith(str(tmp_path))


@pytest.mark.skipif(os.geteuid() != 0, reason="uid slots are only taken by a root host")
def test_pools_in_processes_with_different_tmpdirs_hold_different_uids(tmp_path):
    code = HOLD_A_SLOT.format(base=POLICY.uid_base, count=POLICY.uid_count)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        lock_dir, held = holder.stdout.readline().split()
        mine = uid_slots.acquire_uid_slot(POLICY.uid_base, POLICY.uid_count)
        try:
            assert lock_dir == uid_slots.LOCK_DIR
            assert mine.uid != int(held)
        finally:
            mine.release()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_a_lock_dir_open_to_others_is_refused(tmp_path):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    os.chmod(lock_dir, 0o777)
    with pytest.raises(RuntimeError, match="mode 777"):
        uid_slots.acquire_uid_slot(POLICY.uid_base, POLICY.uid_count, str(lock_dir))
    assert list(lock_dir.iterdir()) == []  # no lock file was created in it


def test_a_symlinked_lock_dir_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "locks"
    link.symlink_to(target)
    with pytest.raises(RuntimeError, match="not a directory"):
        uid_slots.acquire_uid_slot(POLICY.uid_base, POLICY.uid_count, str(link))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory to another uid")
def test_a_lock_dir_owned_by_another_user_is_refused(tmp_path):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    os.chown(lock_dir, 65534, 65534)
    with pytest.raises(RuntimeError, match="owned by uid 65534"):
        uid_slots.acquire_uid_slot(POLICY.uid_base, POLICY.uid_count, str(lock_dir))


def test_a_private_lock_dir_of_ours_hands_out_distinct_uids():
    # A range no pool uses: taking a slot kills leftover processes of its uid, and a lock
    # dir of our own does not know the slots that real pools hold.
    base = POLICY.uid_base + POLICY.uid_count
    with tempfile.TemporaryDirectory() as parent:
        lock_dir = os.path.join(parent, "locks")
        first = uid_slots.acquire_uid_slot(base, 8, lock_dir)
        second = uid_slots.acquire_uid_slot(base, 8, lock_dir)
        try:
            assert first.uid != second.uid
            assert os.stat(lock_dir).st_mode & 0o777 == 0o700
        finally:
            first.release()
            second.release()
