"""The coordinator: hands work to rollout workers, files what comes back, restarts the dead.

It sits between any worker pool (local processes or Ray actors: same interface, ``poll``
returns messages and dead workers) and the trajectory buffer, and is the only code that
touches the buffer, under one lock:

* **dispatch**: a warmed-up worker holding fewer than ``orders_in_flight`` orders (idle
  workers first) gets an order of ``groups_per_order`` groups (task chosen by a seeded RNG,
  every episode id unique) when the buffer has room for them
  (back-pressure) and they can be consumed within ``max_staleness`` (``admission``: AReaL's
  rule, from the learner's version, its batch size and ``sync_every``), or, in lock-step mode,
  while the round's budget lasts;
* **collect**: each trajectory goes to the buffer as it arrives (a duplicate is counted, never
  filed twice);
* **recover**: when a worker dies (SIGKILL, crash, broken pipe), the episodes of its orders
  that had not come back are marked lost in the buffer (their groups complete without them and the
  group rules decide), and the worker is restarted.

In asynchronous mode a background thread pumps it; in synchronous mode the loop pumps it
until the round's groups are all back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from glm5_jax.rl.admission import admissible
from glm5_jax.rl.buffer import AssembledGroup, TrajectoryBuffer
from glm5_jax.rl.rollout import GroupOrder

INTERRUPTION_STATS = ("weight_switches", "interrupted_turns", "recomputed_tokens")


class WorkerFailure(RuntimeError):
    """Workers keep dying: restarting them again would hide a bug."""


class RolloutCoordinator:
    def __init__(self, pool, buffer: TrajectoryBuffer, num_tasks: int, groups_per_order: int,
                 seed: int, max_restarts: int = 20, log: Callable[[str], None] = print,
                 order_prefix: str = "", lock_step: bool = False, groups_per_batch: int | None = None,
                 sync_every: int = 1, staleness_at_admission: bool = True,
                 orders_in_flight: int = 1) -> None:
        self.pool = pool
        self.buffer = buffer
        self.num_tasks = num_tasks
        self.groups_per_order = groups_per_order
        self.max_restarts = max_restarts
        self.log = log
        self.order_prefix = order_prefix  # keeps episode ids unique across restarts of the run
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        self._orders_sent = 0
        self._ready: set[int] = set()
        # Orders each worker holds, by order key (at most ``orders_in_flight`` per worker).
        self._assigned: dict[int, dict[str, list[GroupOrder]]] = {}
        self.orders_in_flight = orders_in_flight
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        # Groups left to dispatch this round in lock-step mode; None: as many as the buffer allows.
        self.round_budget: int | None = 0 if lock_step else None
        self.dispatch_enabled = False  # the loop opens the gate when its clock starts
        # Admission control (``admission``). The batch size is also learnt from ``take``; until
        # it is known only back-pressure applies. sync_every=1 assumes a push after every step
        # (safe for any cadence; a larger value admits more when pushes are rarer).
        self.groups_per_batch = groups_per_batch
        self.sync_every = sync_every
        self.staleness_at_admission = staleness_at_admission
        self._learner_waiting = True  # before its first batch the learner waits with version 0
        self.admission_held_s = 0.0  # time an idle worker was held back by the staleness rule
        self._held_since: float | None = None
        self.restarts = 0
        self.worker_busy_s = 0.0
        self.worker_generate_s = 0.0
        self.worker_environment_s = 0.0
        self.generated_tokens = 0
        self.interruptions = dict.fromkeys(INTERRUPTION_STATS, 0)
        self.policy_load_s = 0.0
        self.errors: list[str] = []
        self.failure: Exception | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # One step of work -----------------------------------------------------------------------
    def pump(self, timeout: float = 0.05) -> None:
        messages, dead = self.pool.poll(timeout)
        with self.lock:
            for worker_id, message in messages:
                self._handle(worker_id, message)
            for worker_id in dead:
                self._recover(worker_id)
            self._dispatch()
            if messages or dead:
                self.arrived.notify_all()

    def _handle(self, worker_id: int, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            self._ready.add(worker_id)
        elif kind == "trajectory":
            self.buffer.add(message[1])
        elif kind == "order_done":
            _, order_key, stats = message
            self._assigned.get(worker_id, {}).pop(order_key, None)
            self.worker_busy_s += stats["generate_s"] + stats["environment_s"]
            self.worker_generate_s += stats["generate_s"]
            self.worker_environment_s += stats["environment_s"]
            self.generated_tokens += stats["generated_tokens"]
            for key in INTERRUPTION_STATS:  # continuous sampler only; 0 otherwise
                self.interruptions[key] += stats.get(key, 0)
            self.policy_load_s = max(self.policy_load_s, stats.get("policy_load_s", 0.0))
        elif kind == "error":
            self.errors.append(message[1])
            self.log(f"rollout worker {worker_id} failed:\n{message[1]}")

    def _recover(self, worker_id: int) -> None:
        held = self._assigned.pop(worker_id, {})
        lost = 0
        for order in (order for orders in held.values() for order in orders):
            for episode_id in order.episode_ids:
                before = self.buffer.accounting.lost
                self.buffer.mark_lost(order.group_id, episode_id)
                lost += self.buffer.accounting.lost - before
        self._ready.discard(worker_id)
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise WorkerFailure(f"{self.restarts} worker restarts (limit {self.max_restarts}); "
                                f"last errors: {self.errors[-3:]}")
        self.log(f"rollout worker {worker_id} died; {lost} running episodes counted as lost; "
                 "restarting it")
        self.pool.restart(worker_id)

    def _dispatch(self) -> None:
        if not self.dispatch_enabled:
            return
        # Idle workers first, then workers holding one order, and so on up to orders_in_flight.
        for held in range(self.orders_in_flight):
            for worker_id in sorted(self._ready):
                if len(self._assigned.get(worker_id, {})) == held and not self._dispatch_one(worker_id):
                    return

    def _dispatch_one(self, worker_id: int) -> bool:
        """Send ``worker_id`` one order if the budget, the buffer's room and the staleness rule
        allow it; False when they do not (no other worker gets one either)."""
        groups = self.groups_per_order
        if self.round_budget is not None:
            groups = min(groups, self.round_budget)
        if groups <= 0 or self.buffer.room() < groups:
            self._release_hold()
            return False
        if not self._admits(groups):
            if self._held_since is None:
                self._held_since = time.monotonic()
            return False
        self._release_hold()
        order_key = f"{self.order_prefix}o{self._orders_sent}"
        orders = []
        for g in range(groups):
            group_id = f"{order_key}g{g}"
            episode_ids = tuple(f"{group_id}e{i}" for i in range(self.buffer.group_size))
            task_index = int(self._rng.integers(self.num_tasks))
            orders.append(GroupOrder(group_id, task_index, episode_ids,
                                     seed=self._seed * 1_000_003 + self._orders_sent * 101 + g))
            self.buffer.expect(group_id, list(episode_ids))
        self.pool.send(worker_id, order_key, orders)
        self._assigned.setdefault(worker_id, {})[order_key] = orders
        self._orders_sent += 1
        if self.round_budget is not None:
            self.round_budget -= groups
        return True

    def _admits(self, groups: int) -> bool:
        if not self.staleness_at_admission or self.groups_per_batch is None:
            return True
        pending = self.buffer.capacity_groups - self.buffer.room()  # dispatched, not yet taken
        return admissible(pending, groups, self.groups_per_batch, self.sync_every,
                          self.buffer.max_staleness, self._learner_waiting)

    def _release_hold(self) -> None:
        if self._held_since is not None:
            self.admission_held_s += time.monotonic() - self._held_since
            self._held_since = None

    def outstanding_by_worker(self) -> dict[int, list[str]]:
        """Episode ids each busy worker still owes (call with ``lock`` held)."""
        outstanding = self._outstanding()
        return {worker_id: [e for orders in held.values() for order in orders for e in order.episode_ids
                            if (order.group_id, e) in outstanding]
                for worker_id, held in self._assigned.items() if held}

    def _outstanding(self) -> set[tuple[str, str]]:
        return set(self.buffer.outstanding_episodes())

    # Waiting for workers and batches ----------------------------------------------------------
    def wait_until_ready(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self._ready) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self._ready)} of {count} rollout workers ready after "
                                   f"{timeout_s}s; errors: {self.errors[-3:]}")
            self.pump(0.2)

    def take(self, num_groups: int, version: int, timeout_s: float) -> list[AssembledGroup]:
        """Block until the buffer yields ``num_groups`` groups (async mode: thread pumps)."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            self.groups_per_batch = num_groups
            self._learner_waiting = True  # the batch being assembled is consumed at ``version``
            while True:
                groups = self.buffer.take(num_groups, version)
                if groups is not None:
                    self._learner_waiting = False
                    return groups
                if self.failure is not None:
                    raise WorkerFailure(f"the coordinator thread failed: {self.failure!r}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no batch of {num_groups} groups after {timeout_s}s; "
                                       f"buffer: {self.buffer.metrics()}")
                if self._thread is None:
                    self.lock.release()
                    try:
                        self.pump(0.05)
                    finally:
                        self.lock.acquire()
                else:
                    self.arrived.wait(0.1)

    def lock_step_round(self, num_groups: int, version: int, timeout_s: float) -> list[AssembledGroup]:
        """Synchronous mode: dispatch exactly one batch with the current weights, wait for all."""
        with self.lock:
            self.round_budget = num_groups
        try:
            return self.take(num_groups, version, timeout_s)
        finally:
            with self.lock:
                self.round_budget = 0

    # Background pumping (async mode) ----------------------------------------------------------
    def start_background(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.pump(0.05)
                except Exception as error:  # noqa: BLE001 - surface it to the learner thread
                    self.errors.append(repr(error))
                    self.failure = error
                    with self.lock:
                        self.arrived.notify_all()
                    return

        self._thread = threading.Thread(target=loop, name="rollout-coordinator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def metrics(self) -> dict[str, Any]:
        with self.lock:
            self.buffer.check_invariants()
            return {**self.buffer.metrics(), "workers/restarts": self.restarts,
                    "workers/ready": len(self._ready), "workers/busy_s": self.worker_busy_s,
                    "workers/generate_s": self.worker_generate_s,
                    "workers/environment_s": self.worker_environment_s,
                    "workers/generated_tokens": self.generated_tokens,
                    "admission/held_s": self.admission_held_s,
                    **{f"workers/{key}": n for key, n in self.interruptions.items()},
                    "push/worker_load_s": self.policy_load_s}
