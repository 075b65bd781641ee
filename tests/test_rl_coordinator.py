"""The coordinator's books when rollout workers die: exactly the episodes a dead worker still
owed are marked lost (never those it returned, never re-dispatched under the same id), its
groups complete without them, and dispatched = generated + lost + running stays exact.

Two levels: a scripted in-memory pool (deterministic, every message under the test's control)
and real worker processes on ``ProcessWorkerPool``'s pipes, one SIGKILLed while it holds
episodes (a stand-in worker body: no model, so it starts in seconds).
"""

import json
import os
import time
from pathlib import Path

import ml_collections
import pytest

from glm5_jax.rl.buffer import TrajectoryBuffer
from glm5_jax.rl.coordinator import RolloutCoordinator, WorkerFailure
from glm5_jax.rl.process_pool import ProcessWorkerPool
from glm5_jax.rl.trajectory import Trajectory, Turn

STATS = {"generate_s": 0.0, "environment_s": 0.0, "generated_tokens": 2}


def trajectory(group_id: str, episode_id: str, worker_id: int = -1) -> Trajectory:
    return Trajectory(episode_id, group_id, "task", [Turn([5, 6], [7, 1], [-0.5, -0.1], 0, 1.0)],
                      {"correct": 1.0}, passed=True, worker_id=worker_id)


class RecordingBuffer(TrajectoryBuffer):
    """Remembers which episodes were counted lost (in order) and which were filed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lost_ids: list[str] = []
        self.filed_ids: list[str] = []
        self.filed_by: dict[str, int] = {}  # episode id -> the worker that returned it

    def mark_lost(self, group_id: str, episode_id: str) -> None:
        before = self.accounting.lost
        super().mark_lost(group_id, episode_id)
        if self.accounting.lost != before:
            self.lost_ids.append(episode_id)

    def add(self, trajectory: Trajectory) -> bool:
        filed = super().add(trajectory)
        if filed:
            self.filed_ids.append(trajectory.episode_id)
            self.filed_by[trajectory.episode_id] = trajectory.worker_id
        return filed


def books(buffer: TrajectoryBuffer) -> dict[str, int]:
    buffer.check_invariants()
    a = buffer.accounting
    return {"dispatched": a.dispatched, "generated": a.generated, "lost": a.lost,
            "running": buffer.running, "buffered": buffer.buffered, "consumed": a.consumed,
            "dropped": a.dropped_total, "duplicates": a.duplicates}


# A scripted pool ----------------------------------------------------------------------------
class ScriptedPool:
    """The pool interface with every message and death queued by the test."""

    def __init__(self) -> None:
        self.inbox: list[tuple[int, tuple]] = []
        self.deaths: list[int] = []
        self.sent: dict[int, list[tuple[str, list]]] = {}
        self.restarted: list[int] = []

    def poll(self, timeout: float):
        messages, dead = self.inbox, self.deaths
        self.inbox, self.deaths = [], []
        return messages, dead

    def send(self, worker_id: int, order_key: str, orders: list) -> None:
        self.sent.setdefault(worker_id, []).append((order_key, orders))

    def restart(self, worker_id: int) -> None:
        self.restarted.append(worker_id)

    def last_orders(self, worker_id: int) -> list:
        return self.sent[worker_id][-1][1]


def scripted(group_size=3, groups_per_order=2, capacity_groups=8, max_restarts=20):
    pool = ScriptedPool()
    buffer = RecordingBuffer(group_size=group_size, max_staleness=4, capacity_groups=capacity_groups)
    coordinator = RolloutCoordinator(pool, buffer, num_tasks=5, groups_per_order=groups_per_order,
                                     seed=0, max_restarts=max_restarts, log=lambda _: None)
    return pool, buffer, coordinator


def test_dead_worker_loses_exactly_the_episodes_it_still_owed():
    pool, buffer, coordinator = scripted()
    pool.inbox += [(0, ("ready", {})), (1, ("ready", {}))]
    coordinator.dispatch_enabled = True
    coordinator.pump()
    orders0, orders1 = pool.last_orders(0), pool.last_orders(1)
    assert [len(o.episode_ids) for o in orders0 + orders1] == [3, 3, 3, 3]
    assert books(buffer) == {"dispatched": 12, "generated": 0, "lost": 0, "running": 12,
                             "buffered": 0, "consumed": 0, "dropped": 0, "duplicates": 0}

    # Worker 0 returns the first two episodes of its first group, then dies; in the same poll
    # worker 1 finishes its whole order.
    returned = list(orders0[0].episode_ids[:2])
    owed = [e for o in orders0 for e in o.episode_ids if e not in returned]
    pool.inbox += [(0, ("trajectory", trajectory(orders0[0].group_id, e, 0))) for e in returned]
    pool.inbox += [(1, ("trajectory", trajectory(o.group_id, e, 1)))
                   for o in orders1 for e in o.episode_ids]
    pool.inbox.append((1, ("order_done", pool.sent[1][-1][0], STATS)))
    pool.deaths.append(0)
    coordinator.pump()

    assert buffer.lost_ids == owed  # exactly these four, in order, each once
    assert pool.restarted == [0] and coordinator.restarts == 1
    # Worker 1 (idle again) got a fresh order; worker 0 waits for its replacement's "ready".
    assert len(pool.sent[1]) == 2 and len(pool.sent[0]) == 1
    new_ids = [e for o in pool.last_orders(1) for e in o.episode_ids]
    assert coordinator.outstanding_by_worker() == {1: new_ids}
    assert books(buffer) == {"dispatched": 18, "generated": 8, "lost": 4, "running": 6,
                             "buffered": 8, "consumed": 0, "dropped": 0, "duplicates": 0}
    assert not {e for _, e in buffer.outstanding_episodes()} & set(owed)

    # A message the dead worker wrote before dying but that arrives late is a duplicate.
    pool.inbox.append((0, ("trajectory", trajectory(orders0[1].group_id, orders0[1].episode_ids[0], 0))))
    coordinator.pump()
    assert books(buffer)["duplicates"] == 1 and books(buffer)["generated"] == 8

    # Its groups complete without the lost episodes: group 0 (2 of 3 valid) is padded, group 1
    # (0 of 3 valid) dropped; worker 1's two groups are whole.
    groups = buffer.take(3, current_version=0)
    assert [g.group_id for g in groups] == [orders0[0].group_id] + [o.group_id for o in orders1]
    assert [g.num_padded for g in groups] == [1, 0, 0]
    assert [s.episode_id for s in groups[0].samples] == returned + returned[:1]
    assert buffer.accounting.groups_dropped == 1 and buffer.accounting.padded == 1
    assert books(buffer) == {"dispatched": 18, "generated": 8, "lost": 4, "running": 6,
                             "buffered": 0, "consumed": 8, "dropped": 0, "duplicates": 1}

    # The replacement gets new episode ids: a lost id is never dispatched again.
    pool.inbox.append((0, ("ready", {})))
    coordinator.pump()
    replacement_ids = {e for o in pool.last_orders(0) for e in o.episode_ids}
    assert len(replacement_ids) == 6 and not replacement_ids & set(owed + returned + new_ids)
    assert books(buffer)["dispatched"] == 24 and books(buffer)["running"] == 12


def test_idle_worker_death_loses_nothing_and_restart_limit_raises():
    pool, buffer, coordinator = scripted(groups_per_order=1, max_restarts=2)
    pool.inbox += [(0, ("ready", {})), (1, ("ready", {}))]
    coordinator.pump()  # the gate is closed: nothing dispatched, both idle
    pool.deaths.append(1)
    coordinator.pump()
    assert buffer.lost_ids == [] and pool.restarted == [1]
    assert books(buffer)["dispatched"] == 0

    # A worker that already returned its whole order owes nothing: its death loses nothing.
    coordinator.dispatch_enabled = True
    coordinator.pump()
    [order] = pool.last_orders(0)
    pool.inbox += [(0, ("trajectory", trajectory(order.group_id, e, 0))) for e in order.episode_ids]
    pool.deaths.append(0)
    coordinator.pump()
    assert buffer.lost_ids == [] and pool.restarted == [1, 0]
    assert books(buffer) == {"dispatched": 3, "generated": 3, "lost": 0, "running": 0,
                             "buffered": 3, "consumed": 0, "dropped": 0, "duplicates": 0}
    pool.deaths.append(0)
    with pytest.raises(WorkerFailure, match="3 worker restarts"):
        coordinator.pump()


def test_a_worker_holds_up_to_orders_in_flight_orders_idle_workers_first():
    """With orders_in_flight=2 a busy worker gets a second order (idle workers are served
    first); a finished order frees its place; a death loses what every held order still owed."""
    pool = ScriptedPool()
    buffer = RecordingBuffer(group_size=2, max_staleness=4, capacity_groups=5)
    coordinator = RolloutCoordinator(pool, buffer, num_tasks=5, groups_per_order=1, seed=0,
                                     log=lambda _: None, orders_in_flight=2)
    pool.inbox += [(0, ("ready", {}))]
    coordinator.dispatch_enabled = True
    coordinator.pump()
    assert len(pool.sent[0]) == 2  # one worker ready: it takes two orders
    pool.inbox += [(1, ("ready", {}))]
    coordinator.pump()
    assert len(pool.sent[1]) == 2 and len(pool.sent[0]) == 2  # never a third
    assert books(buffer)["running"] == 8 and buffer.room() == 1

    # Worker 0's first order comes back (it still runs its second): it gets one more order.
    first_key, [first] = pool.sent[0][0]
    pool.inbox += [(0, ("trajectory", trajectory(first.group_id, e, 0))) for e in first.episode_ids]
    pool.inbox.append((0, ("order_done", first_key, STATS)))
    coordinator.pump()
    assert len(pool.sent[0]) == 3 and len(pool.sent[1]) == 2
    held = [e for _, [order] in pool.sent[0][1:] for e in order.episode_ids]
    assert coordinator.outstanding_by_worker()[0] == held

    # Worker 1 dies holding two orders: all four of their episodes are lost, nothing else.
    owed = [e for _, [order] in pool.sent[1] for e in order.episode_ids]
    assert coordinator.outstanding_by_worker()[1] == owed
    pool.deaths.append(1)
    coordinator.pump()
    assert buffer.lost_ids == owed and 1 not in coordinator.outstanding_by_worker()
    assert books(buffer) == {"dispatched": 10, "generated": 2, "lost": 4, "running": 4,
                             "buffered": 2, "consumed": 0, "dropped": 0, "duplicates": 0}


# Real processes, one SIGKILLed while it holds episodes --------------------------------------
def stand_in_worker_main(worker_id, conn, config_json, scratch_dir):
    """Speaks the worker protocol without a model. The first incarnation of ``hang_worker``
    returns ``emit_before_hang`` episodes of its first order, writes a marker, and blocks.
    (``scratch_dir`` arrives where a real worker gets its launch details.)"""
    config = json.loads(config_json)
    marker = Path(scratch_dir) / f"hung_{worker_id}"
    conn.send(("ready", {"pid": os.getpid()}))
    try:
        while True:
            message = conn.recv()
            if message[0] == "stop":
                return
            _, order_key, orders = message
            episodes = [(o.group_id, e) for o in orders for e in o.episode_ids]
            hang = worker_id == config["hang_worker"] and not marker.exists()
            for count, (group_id, episode_id) in enumerate(episodes):
                if hang and count == config["emit_before_hang"]:
                    marker.write_text(str(os.getpid()))
                    time.sleep(3600)  # holds the rest until it is killed
                conn.send(("trajectory", trajectory(group_id, episode_id, worker_id)))
            conn.send(("order_done", order_key, STATS))
    except (EOFError, BrokenPipeError):
        pass


class StandInProcessPool(ProcessWorkerPool):
    """ProcessWorkerPool (its pipes, poll, kill, restart) with the stand-in worker body."""

    def start(self, worker_id: int) -> None:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=stand_in_worker_main, name=f"stand-in-worker-{worker_id}", daemon=True,
            args=(worker_id, child_end, self._config_json, self._launch))
        process.start()
        child_end.close()
        self._processes[worker_id] = process
        self._conns[worker_id] = parent_end


def pump_until(coordinator, condition, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s  # generous: only bounds a hang, never judges speed
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}; books: {coordinator.buffer.metrics()}")
        coordinator.pump(0.05)


def test_sigkilled_worker_process_loses_exactly_its_owed_episodes(tmp_path):
    config = ml_collections.ConfigDict({"hang_worker": 0, "emit_before_hang": 2})
    pool = StandInProcessPool(2, config, str(tmp_path))
    buffer = RecordingBuffer(group_size=3, max_staleness=4, capacity_groups=4)
    coordinator = RolloutCoordinator(pool, buffer, num_tasks=5, groups_per_order=2, seed=1,
                                     log=lambda _: None)
    try:
        pool.start_all()
        coordinator.wait_until_ready(2, timeout_s=120)
        first_pid = pool.pid(0)
        coordinator.dispatch_enabled = True
        coordinator.pump(0.05)
        (orders0,), (orders1,) = (list(coordinator._assigned[w].values()) for w in (0, 1))
        ids0 = [e for o in orders0 for e in o.episode_ids]
        ids1 = [e for o in orders1 for e in o.episode_ids]
        # Wait until worker 0 has returned its two episodes and is holding the other four.
        pump_until(coordinator, lambda: (tmp_path / "hung_0").exists()
                   and set(ids0[:2]) <= set(buffer.filed_ids), "worker 0 never hung")
        with coordinator.lock:
            owed = coordinator.outstanding_by_worker()[0]
        assert owed == ids0[2:]
        pool.kill(0)
        pump_until(coordinator, lambda: coordinator.restarts == 1, "the kill was not noticed")
        assert buffer.lost_ids == owed
        assert pool.pid(0) != first_pid and 0 not in coordinator.outstanding_by_worker()
        # Worker 1 finishes its order (the buffer is full: no new orders); nothing else runs.
        pump_until(coordinator, lambda: buffer.running == 0, "worker 1 never finished")
        assert sorted(buffer.filed_ids) == sorted(ids0[:2] + ids1)
        assert books(buffer) == {"dispatched": 12, "generated": 8, "lost": 4, "running": 0,
                                 "buffered": 8, "consumed": 0, "dropped": 0, "duplicates": 0}
        # The replacement comes up; room is made (the buffer was full), and it and worker 1
        # each get a new order with new ids.
        pump_until(coordinator, lambda: coordinator.metrics()["workers/ready"] == 2,
                   "the replacement never came up")
        groups = buffer.take(3, current_version=0)
        assert [g.num_padded for g in groups] == [1, 0, 0]
        assert buffer.accounting.groups_dropped == 1  # worker 0's second group: all lost
        pump_until(coordinator, lambda: buffer.accounting.dispatched == 24, "no orders after restart")
        coordinator.dispatch_enabled = False
        pump_until(coordinator, lambda: buffer.running == 0, "the last orders never finished")
        later = buffer.filed_ids[8:]
        assert len(later) == 12 and not set(later) & set(ids0 + ids1)
        assert sorted(buffer.filed_by[e] for e in later) == [0] * 6 + [1] * 6
        final = books(buffer)
        assert final["generated"] == 8 + len(buffer.filed_ids[8:]) and final["lost"] == 4
        assert final["dispatched"] == final["generated"] + final["lost"]
        assert buffer.lost_ids == owed and coordinator.restarts == 1 and coordinator.errors == []
    finally:
        pool.close()
