"""Staleness enforced at admission (AReaL's rule): the coordinator never starts a rollout that
would be consumed more than ``max_staleness`` versions after the one it starts under.

A simulated run drives the real coordinator and buffer: a scripted pool whose workers sample
with the version published when they start and return each order a fixed number of ticks
later (so groups finish in dispatch order, the rule's model), and a learner that takes a
batch, trains for some ticks while the coordinator keeps dispatching, and publishes a version
every ``sync_every`` steps. Over many settings no consumed sample exceeds the bound and
nothing is dropped as stale; with the rule switched off the same runs overshoot it, drop
samples and count their tokens as wasted.
"""

import itertools

import pytest

from glm5_jax.rl.admission import admissible, staleness_at_consumption
from glm5_jax.rl.buffer import TrajectoryBuffer, staleness_histogram
from glm5_jax.rl.coordinator import RolloutCoordinator
from glm5_jax.rl.trajectory import Trajectory, Turn

ACTION_TOKENS = 3
STATS = {"generate_s": 0.0, "environment_s": 0.0, "generated_tokens": 0}


class SimulatedPool:
    """Each poll is one tick. An order sent at tick t is sampled with the version published at
    t and comes back whole at tick t + order_ticks."""

    def __init__(self, workers: int, order_ticks: int) -> None:
        self.tick, self.published, self.order_ticks = 0, 0, order_ticks
        self.due: list[tuple[int, int, str, list, int]] = []  # (tick, worker, key, orders, version)
        self.inbox = [(w, ("ready", {})) for w in range(workers)]

    def send(self, worker_id: int, order_key: str, orders: list) -> None:
        self.due.append((self.tick + self.order_ticks, worker_id, order_key, orders, self.published))

    def poll(self, timeout: float):
        self.tick += 1
        messages, self.inbox = self.inbox, []
        for entry in [d for d in self.due if d[0] <= self.tick]:
            self.due.remove(entry)
            _, worker_id, order_key, orders, version = entry
            for order in orders:
                for episode_id in order.episode_ids:
                    turn = Turn([5], [7] * ACTION_TOKENS, [-0.5] * ACTION_TOKENS, version, 1.0)
                    messages.append((worker_id, ("trajectory", Trajectory(
                        episode_id, order.group_id, "task", [turn], {}, worker_id=worker_id))))
            messages.append((worker_id, ("order_done", order_key, STATS)))
        return messages, []

    def restart(self, worker_id: int) -> None:
        raise AssertionError("no worker dies here")


def simulate(groups_per_batch, groups_per_order, capacity_groups, max_staleness, sync_every, workers,
             order_ticks, train_ticks, enforce=True, steps=24):
    """Returns (largest staleness consumed, buffer) after ``steps`` learner steps."""
    pool = SimulatedPool(workers, order_ticks)
    buffer = TrajectoryBuffer(group_size=2, max_staleness=max_staleness, capacity_groups=capacity_groups)
    coordinator = RolloutCoordinator(pool, buffer, num_tasks=3, groups_per_order=groups_per_order, seed=0,
                                     log=lambda _: None, groups_per_batch=groups_per_batch,
                                     sync_every=sync_every, staleness_at_admission=enforce)
    coordinator.dispatch_enabled = True
    version, worst = 0, 0
    for step in range(steps):
        groups = coordinator.take(groups_per_batch, version, timeout_s=60)
        worst = max([worst] + [int(k) for k in staleness_histogram(groups, version)])
        for _ in range(train_ticks):  # the coordinator keeps dispatching while the learner trains
            coordinator.pump()
        if (step + 1) % sync_every == 0:
            version += 1
            pool.published = version
    buffer.check_invariants()
    return worst, buffer


SETTINGS = [  # groups_per_batch, groups_per_order, capacity_groups, max_staleness, sync_every
    (4, 2, 8, 1, 1), (4, 2, 8, 2, 1), (4, 1, 12, 1, 1), (2, 2, 8, 1, 2), (4, 2, 16, 2, 3),
    (3, 1, 9, 0, 1), (4, 4, 12, 1, 1),
]
TIMINGS = [  # workers, order_ticks, train_ticks: rollouts slower or faster than training
    (1, 2, 6), (3, 1, 8), (2, 5, 2), (4, 3, 3),
]


@pytest.mark.parametrize("setting", SETTINGS)
def test_admission_never_starts_a_rollout_that_would_exceed_the_bound(setting):
    b, g, capacity, max_staleness, sync_every = setting
    for workers, order_ticks, train_ticks in TIMINGS:
        worst, buffer = simulate(b, g, capacity, max_staleness, sync_every, workers, order_ticks, train_ticks)
        assert worst <= max_staleness, (setting, workers, order_ticks, train_ticks)
        assert buffer.accounting.dropped["stale"] == 0 and buffer.accounting.wasted_tokens == 0
        assert buffer.accounting.groups_consumed == 24 * b


def test_without_admission_control_the_same_runs_overshoot_and_waste_tokens():
    overshoots = 0
    for (b, g, capacity, max_staleness, sync_every), (workers, order_ticks, train_ticks) in \
            itertools.product(SETTINGS, TIMINGS):
        _, buffer = simulate(b, g, capacity, max_staleness, sync_every, workers, order_ticks, train_ticks,
                             enforce=False)
        stale = buffer.accounting.dropped["stale"]
        assert buffer.accounting.wasted_tokens == stale * ACTION_TOKENS
        assert buffer.metrics()["buffer/wasted_tokens"] == stale * ACTION_TOKENS
        overshoots += stale > 0
    assert overshoots >= len(SETTINGS)  # the rule above is what keeps those runs clean


def test_the_rule_counts_batch_boundaries_and_pushes():
    # Waiting for a batch of 4: the first 4 pending groups are consumed at the current version.
    assert staleness_at_consumption(2, 2, 4, 1, learner_waiting=True) == 0
    assert staleness_at_consumption(3, 2, 4, 1, learner_waiting=True) == 1
    # Training: a push may land before the next batch.
    assert staleness_at_consumption(0, 2, 4, 1, learner_waiting=False) == 1
    # Pushes every 3 steps: 4 boundaries cross at most 2 pushes.
    assert staleness_at_consumption(15, 1, 4, 3, learner_waiting=True) == 1
    assert staleness_at_consumption(16, 1, 4, 3, learner_waiting=True) == 2
    # Lock-step (max_staleness 0): a round of one batch is admitted while the learner waits.
    assert admissible(0, 4, 4, 1, max_staleness=0, learner_waiting=True)
    assert not admissible(0, 4, 4, 1, max_staleness=0, learner_waiting=False)
