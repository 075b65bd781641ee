"""Trajectory buffer: staleness bound, group rules, back-pressure, exact accounting, resume."""

import json

import pytest

from glm5_jax.rl.buffer import TrajectoryBuffer, staleness_histogram
from glm5_jax.rl.trajectory import Trajectory, Turn


def make_trajectory(group: str, index: int, version: int = 0, crashed: bool = False,
                    versions: tuple[int, ...] | None = None) -> Trajectory:
    turns = [Turn([5, 6], [7, 1], [-0.5, -0.1], v, 0.0) for v in (versions or (version,))]
    turns[-1].reward = 1.0
    return Trajectory(f"{group}:{index}", group, "task", turns, {"correct": 1.0},
                      passed=True, env_crashed=crashed)


def dispatch(buffer: TrajectoryBuffer, group: str) -> list[str]:
    ids = [f"{group}:{i}" for i in range(buffer.group_size)]
    buffer.expect(group, ids)
    return ids


def test_full_group_is_taken_once_and_accounted():
    buffer = TrajectoryBuffer(group_size=4, max_staleness=2, capacity_groups=4)
    dispatch(buffer, "g0")
    for i in range(3):
        assert buffer.add(make_trajectory("g0", i))
    assert buffer.take(1, current_version=0) is None  # incomplete: one still running
    assert buffer.add(make_trajectory("g0", 3))
    assert not buffer.add(make_trajectory("g0", 3))  # a duplicate arrival is ignored
    [group] = buffer.take(1, current_version=0)
    assert len(group.samples) == 4 and group.num_padded == 0
    assert buffer.take(1, current_version=0) is None
    a = buffer.accounting
    assert (a.dispatched, a.generated, a.consumed, a.duplicates) == (4, 4, 4, 1)
    buffer.check_invariants()


def test_staleness_bound_drops_and_counts():
    buffer = TrajectoryBuffer(group_size=2, max_staleness=1, capacity_groups=4)
    dispatch(buffer, "old")
    dispatch(buffer, "new")
    buffer.add(make_trajectory("old", 0, version=0))
    buffer.add(make_trajectory("old", 1, version=0))
    buffer.add(make_trajectory("new", 0, version=2))
    # A sample whose *oldest* turn is too old is stale even if its last turn is fresh.
    buffer.add(make_trajectory("new", 1, versions=(0, 2)))
    assert buffer.take(1, current_version=2) is None  # "old" at staleness 2 > 1: dropped
    assert buffer.accounting.dropped["stale"] == 3
    assert buffer.accounting.dropped["group_too_small"] == 1  # "new" lost half its group
    buffer.check_invariants()

    buffer = TrajectoryBuffer(group_size=2, max_staleness=1, capacity_groups=4)
    dispatch(buffer, "g")
    buffer.add(make_trajectory("g", 0, version=1))
    buffer.add(make_trajectory("g", 1, versions=(1, 2)))
    [group] = buffer.take(1, current_version=2)  # staleness 1 is within the bound
    assert staleness_histogram([group], current_version=2) == {"1": 2}


def test_group_rules_pad_when_more_than_half_valid_else_drop():
    buffer = TrajectoryBuffer(group_size=4, max_staleness=0, capacity_groups=4)
    dispatch(buffer, "pad")
    buffer.add(make_trajectory("pad", 0))
    buffer.add(make_trajectory("pad", 1, crashed=True))
    buffer.add(make_trajectory("pad", 2))
    buffer.add(make_trajectory("pad", 3))
    [group] = buffer.take(1, current_version=0)
    ids = [t.episode_id for t in group.samples]
    assert ids == ["pad:0", "pad:2", "pad:3", "pad:0"] and group.num_padded == 1
    assert all(not t.env_crashed for t in group.samples)

    dispatch(buffer, "half")
    buffer.add(make_trajectory("half", 0))
    buffer.add(make_trajectory("half", 1))
    buffer.add(make_trajectory("half", 2, crashed=True))
    buffer.mark_lost("half", "half:3")  # its worker died
    assert buffer.take(1, current_version=0) is None  # exactly half valid: dropped
    a = buffer.accounting
    assert a.dropped == {"stale": 0, "env_crashed": 2, "group_too_small": 2}
    assert (a.consumed, a.padded, a.lost, a.groups_dropped) == (3, 1, 1, 1)
    buffer.check_invariants()


def test_back_pressure_counts_in_flight_and_buffered_groups():
    buffer = TrajectoryBuffer(group_size=1, max_staleness=0, capacity_groups=2)
    assert buffer.room() == 2
    dispatch(buffer, "a")
    dispatch(buffer, "b")
    assert buffer.room() == 0  # two running: workers must wait
    buffer.add(make_trajectory("a", 0))
    assert buffer.room() == 0  # one buffered, one running
    buffer.take(1, current_version=0)
    assert buffer.room() == 1
    with pytest.raises(ValueError):
        buffer.expect("c", ["c:0", "c:1"])  # wrong group size


def test_state_round_trip_counts_running_episodes_as_lost():
    buffer = TrajectoryBuffer(group_size=2, max_staleness=3, capacity_groups=4)
    dispatch(buffer, "done")
    dispatch(buffer, "half")
    buffer.add(make_trajectory("done", 0))
    buffer.add(make_trajectory("done", 1))
    buffer.add(make_trajectory("half", 0))
    state = json.loads(json.dumps(buffer.state_dict()))  # must be JSON-safe
    restored = TrajectoryBuffer(group_size=2, max_staleness=3, capacity_groups=4)
    restored.load_state_dict(state)
    restored.check_invariants()
    assert restored.accounting.lost == 1 and restored.running == 0
    assert [g.group_id for g in restored.take(1, current_version=0)] == ["done"]
    assert restored.take(1, current_version=0) is None  # "half" has 1 of 2 valid: dropped
    assert not restored.add(make_trajectory("done", 0))  # seen before the restart
    restored.check_invariants()


def coordinator_ids(prefix: str, order: int, group: int, group_size: int) -> tuple[str, list[str]]:
    """Ids as the coordinator makes them: r<resume>o<order>g<group>, episodes e<index>."""
    group_id = f"{prefix}o{order}g{group}"
    return group_id, [f"{group_id}e{i}" for i in range(group_size)]


def run_orders(buffer: TrajectoryBuffer, prefix: str, orders: range) -> None:
    """Dispatch, file and take two groups per order."""
    for order in orders:
        for group in range(2):
            group_id, episode_ids = coordinator_ids(prefix, order, group, buffer.group_size)
            buffer.expect(group_id, episode_ids)
            for episode_id in episode_ids:
                assert buffer.add(Trajectory(episode_id, group_id, "task", [Turn([5], [7], [-0.5], 0, 1.0)],
                                             {"correct": 1.0}, passed=True))
        assert len(buffer.take(2, current_version=0)) == 2


def test_state_stays_bounded_over_many_orders_and_still_refuses_duplicates():
    buffer = TrajectoryBuffer(group_size=2, max_staleness=0, capacity_groups=4)
    run_orders(buffer, "r0", range(10))
    size_after_10 = len(json.dumps(buffer.state_dict()))
    run_orders(buffer, "r0", range(10, 2000))
    state = json.loads(json.dumps(buffer.state_dict()))
    # 4000 consumed episodes later the state has only grown by the digits of the counters it
    # holds (the old one kept each of the 8000 ids: ~80 kB).
    assert buffer.accounting.consumed == 8000
    assert len(json.dumps(state)) <= size_after_10 + 16
    assert state["dispatched_up_to"] == {"r#o#g#": [0, 1999, 1]}

    # One group left open across the save: one episode filed, one running.
    open_id, open_episodes = coordinator_ids("r0", 2000, 0, 2)
    buffer.expect(open_id, open_episodes)
    assert buffer.add(Trajectory(open_episodes[0], open_id, "task", [Turn([5], [7], [-0.5], 0, 1.0)], {}))
    restored = TrajectoryBuffer(group_size=2, max_staleness=0, capacity_groups=4)
    restored.load_state_dict(json.loads(json.dumps(buffer.state_dict())))
    duplicates = restored.accounting.duplicates
    consumed_id, consumed_episodes = coordinator_ids("r0", 5, 1, 2)
    for group_id, episode_id in [(consumed_id, consumed_episodes[0]),  # trained on long ago
                                 (open_id, open_episodes[0]),  # filed before the save
                                 (open_id, open_episodes[1])]:  # running at the save: lost
        late = Trajectory(episode_id, group_id, "task", [Turn([5], [7], [-0.5], 0, 1.0)], {})
        assert not restored.add(late), episode_id
    assert restored.accounting.duplicates == duplicates + 3
    for order in (5, 1999, 2000):  # a re-dispatched group id: its episodes could be filed again
        with pytest.raises(ValueError, match="not after"):
            restored.expect(*coordinator_ids("r0", order, 0, 2))
    restored.expect(*coordinator_ids("r1", 0, 0, 2))  # the next resume's ids come after
    restored.check_invariants()


def test_dispatch_order_is_by_numbers_within_a_shape():
    buffer = TrajectoryBuffer(group_size=1, max_staleness=0, capacity_groups=100)
    for group_id in ("r0o9g0", "r0o9g1", "r0o10g0", "r1o0g0", "warmup", "x2"):
        buffer.expect(group_id, [f"{group_id}e0"])
    for group_id in ("r0o9g1", "r0o10g0", "r1o0g0", "r0o11g0", "warmup", "x1"):
        with pytest.raises(ValueError, match=f"group {group_id} is not after"):
            buffer.expect(group_id, [f"{group_id}e0"])
