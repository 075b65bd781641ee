"""The trajectory buffer: bounded, version-aware, assembling groups by the paper's rules.

Why each rule:

* **Staleness bound.** A trajectory whose oldest turn was sampled more than ``max_staleness``
  weight pushes ago is dropped (and counted): the importance ratio against such an old policy
  is mostly masked anyway and only adds variance.
* **Group rules.** GRPO needs ``group_size`` samples of one prompt. Samples from crashed
  environments say nothing about the policy and are dropped. If more than half of a group is
  still valid, the group is padded by repeating valid samples (cyclically) back to full size;
  otherwise the baseline would rest on too few samples and the group is dropped.
* **Back-pressure.** ``capacity_groups`` bounds buffered plus in-flight groups, so fast
  workers cannot run unboundedly ahead of the learner (which would only make their samples
  stale).
* **Accounting.** Every episode is counted exactly once: ``generated = consumed + dropped +
  buffered`` at all times, and ``dispatched = generated + lost + running`` (``lost``: episodes
  whose worker died before returning them). An episode id that arrives twice is ignored and
  counted as a duplicate, never trained on twice.
* **Bounded memory of the past.** An episode is filed only while its group is open and the
  episode is still outstanding in it; filing or losing it removes it from there, and a group
  leaves the buffer when it is taken or dropped. So an episode can be filed twice only if its
  group id were dispatched twice. Instead of every id ever seen (which grew without bound in
  every checkpoint), the buffer keeps, per id *shape* (the id with its numbers taken out:
  ``r1o17g0`` has shape ``r#o#g#``), the highest numbers dispatched, and refuses a group whose
  numbers, read left to right, do not exceed them. The coordinator's ids
  (``r<resume>o<order>g<group>``) increase with every dispatch and across resumes.

Single-threaded by design: the coordinator owns it behind one lock.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any

from glm5_jax.rl.trajectory import Trajectory

DROP_REASONS = ("stale", "env_crashed", "group_too_small")
_NUMBER = re.compile(r"[0-9]+")


def dispatch_position(group_id: str) -> tuple[str, tuple[int, ...]]:
    """(shape, numbers) of a group id: ``"r1o17g0"`` -> (``"r#o#g#"``, (1, 17, 0))."""
    return _NUMBER.sub("#", group_id), tuple(int(n) for n in _NUMBER.findall(group_id))


@dataclasses.dataclass
class Accounting:
    dispatched: int = 0  # episodes handed to workers
    generated: int = 0  # episodes that came back
    consumed: int = 0  # trained on (each once; padding copies are counted in ``padded``)
    padded: int = 0
    lost: int = 0  # dispatched but never came back (worker killed, run restarted)
    duplicates: int = 0
    dropped: dict[str, int] = dataclasses.field(
        default_factory=lambda: {reason: 0 for reason in DROP_REASONS})
    groups_consumed: int = 0
    groups_dropped: int = 0
    wasted_tokens: int = 0  # action tokens of samples dropped as stale: generated, never trained on

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


@dataclasses.dataclass
class _Group:
    group_id: str
    size: int
    valid: list[Trajectory] = dataclasses.field(default_factory=list)
    invalid: int = 0  # crashed, stale or lost members
    outstanding: set[str] = dataclasses.field(default_factory=set)  # dispatched, not back

    @property
    def complete(self) -> bool:
        return not self.outstanding and len(self.valid) + self.invalid >= self.size


@dataclasses.dataclass(frozen=True)
class AssembledGroup:
    """``group_size`` samples of one prompt, ready for advantages (padding included)."""

    group_id: str
    samples: tuple[Trajectory, ...]
    num_padded: int


class TrajectoryBuffer:
    def __init__(self, group_size: int, max_staleness: int, capacity_groups: int) -> None:
        if group_size < 1 or capacity_groups < 1 or max_staleness < 0:
            raise ValueError(f"group_size={group_size} and capacity_groups={capacity_groups} must "
                             f"be >= 1 and max_staleness={max_staleness} >= 0")
        self.group_size = group_size
        self.max_staleness = max_staleness
        self.capacity_groups = capacity_groups
        self.accounting = Accounting()
        self._groups: dict[str, _Group] = {}  # not yet handed out, in dispatch order
        self._dispatched_up_to: dict[str, tuple[int, ...]] = {}  # id shape -> highest numbers

    # Producers ------------------------------------------------------------------------------
    def room(self) -> int:
        """Groups that may still be dispatched before back-pressure stops the workers."""
        return self.capacity_groups - len(self._groups)

    def expect(self, group_id: str, episode_ids: list[str]) -> None:
        """A group was dispatched: its ``group_size`` episodes are now running."""
        if len(episode_ids) != self.group_size:
            raise ValueError(f"group {group_id} has {len(episode_ids)} episodes; group_size is "
                             f"{self.group_size}")
        shape, numbers = dispatch_position(group_id)
        highest = self._dispatched_up_to.get(shape)
        if highest is not None and numbers <= highest:
            raise ValueError(f"group {group_id} is not after the last group of its shape {shape!r} "
                             f"(numbers {list(highest)}): it may have been dispatched already. Group "
                             "ids must increase, their numbers read left to right")
        self._dispatched_up_to[shape] = numbers
        self._groups[group_id] = _Group(group_id, self.group_size, outstanding=set(episode_ids))
        self.accounting.dispatched += len(episode_ids)

    def add(self, trajectory: Trajectory) -> bool:
        """File a finished episode; False if it was a duplicate or its group is unknown."""
        group = self._groups.get(trajectory.group_id)
        if group is None or trajectory.episode_id not in group.outstanding:
            self.accounting.duplicates += 1  # filed, lost, or its group taken or dropped
            return False
        group.outstanding.discard(trajectory.episode_id)
        self.accounting.generated += 1
        if trajectory.env_crashed:
            self.accounting.dropped["env_crashed"] += 1
            group.invalid += 1
        else:
            group.valid.append(trajectory)
        return True

    def mark_lost(self, group_id: str, episode_id: str) -> None:
        """An episode that will never come back (its worker died); it counts as invalid."""
        group = self._groups.get(group_id)
        if group is None or episode_id not in group.outstanding:
            return
        group.outstanding.discard(episode_id)
        group.invalid += 1
        self.accounting.lost += 1

    def outstanding_episodes(self) -> list[tuple[str, str]]:
        """(group_id, episode_id) of every dispatched episode not yet back."""
        return [(g.group_id, e) for g in self._groups.values() for e in sorted(g.outstanding)]

    # Consumer -------------------------------------------------------------------------------
    def drop_stale(self, current_version: int) -> int:
        """Drop every buffered sample older than the bound; returns how many."""
        dropped = 0
        for group in self._groups.values():
            fresh = [t for t in group.valid if t.staleness(current_version) <= self.max_staleness]
            stale = len(group.valid) - len(fresh)
            if stale:
                self.accounting.wasted_tokens += sum(t.num_action_tokens for t in group.valid) \
                    - sum(t.num_action_tokens for t in fresh)
                group.valid, group.invalid = fresh, group.invalid + stale
                dropped += stale
        self.accounting.dropped["stale"] += dropped
        return dropped

    def ready_groups(self, current_version: int) -> int:
        """Complete groups that would survive the rules now (cheap enough to poll)."""
        self.drop_stale(current_version)
        self._drop_failed_groups()
        return sum(group.complete for group in self._groups.values())

    def take(self, num_groups: int, current_version: int) -> list[AssembledGroup] | None:
        """The ``num_groups`` oldest complete groups, or None (nothing taken) if fewer exist."""
        if self.ready_groups(current_version) < num_groups:
            return None
        taken = []
        for group_id in [g.group_id for g in self._groups.values() if g.complete][:num_groups]:
            group = self._groups.pop(group_id)
            padding = [group.valid[i % len(group.valid)]
                       for i in range(group.size - len(group.valid))]
            self.accounting.consumed += len(group.valid)
            self.accounting.padded += len(padding)
            self.accounting.groups_consumed += 1
            taken.append(AssembledGroup(group_id, tuple(group.valid + padding), len(padding)))
        return taken

    def _drop_failed_groups(self) -> None:
        for group_id in [g.group_id for g in self._groups.values()
                         if g.complete and 2 * len(g.valid) <= g.size]:
            group = self._groups.pop(group_id)
            self.accounting.dropped["group_too_small"] += len(group.valid)
            self.accounting.groups_dropped += 1

    # Bookkeeping ----------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Episodes that came back and are neither consumed nor dropped."""
        return sum(len(group.valid) for group in self._groups.values())

    @property
    def running(self) -> int:
        return sum(len(group.outstanding) for group in self._groups.values())

    def check_invariants(self) -> None:
        a = self.accounting
        if a.generated != a.consumed + a.dropped_total + self.buffered:
            raise AssertionError(f"generated={a.generated} != consumed={a.consumed} + dropped="
                                 f"{a.dropped_total} + buffered={self.buffered}")
        if a.dispatched != a.generated + a.lost + self.running:
            raise AssertionError(f"dispatched={a.dispatched} != generated={a.generated} + lost="
                                 f"{a.lost} + running={self.running}")

    def metrics(self) -> dict[str, Any]:
        a = self.accounting
        return {"buffer/dispatched": a.dispatched, "buffer/generated": a.generated,
                "buffer/consumed": a.consumed, "buffer/padded": a.padded, "buffer/lost": a.lost,
                "buffer/duplicates": a.duplicates, "buffer/buffered": self.buffered,
                "buffer/running": self.running, "buffer/dropped": a.dropped_total,
                **{f"buffer/dropped_{reason}": n for reason, n in a.dropped.items()},
                "buffer/groups_consumed": a.groups_consumed,
                "buffer/groups_dropped": a.groups_dropped, "buffer/wasted_tokens": a.wasted_tokens}

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe: accounting, the buffered samples and the dispatch high-water marks (running
        episodes are not saved). Its size is bounded by the buffer's capacity."""
        return {"accounting": dataclasses.asdict(self.accounting),
                "groups": [{"group_id": g.group_id, "size": g.size, "invalid": g.invalid,
                            "outstanding": sorted(g.outstanding),
                            "valid": [t.to_dict() for t in g.valid]}
                           for g in self._groups.values()],
                "dispatched_up_to": {shape: list(numbers)
                                     for shape, numbers in self._dispatched_up_to.items()}}

    def load_state_dict(self, state: dict[str, Any], lose_outstanding: bool = True) -> None:
        """Restore; episodes that were running at save time died with the old workers, so by
        default they are counted as lost (their groups complete without them)."""
        fields = dict(state["accounting"])
        fields["dropped"] = {**{r: 0 for r in DROP_REASONS}, **fields["dropped"]}
        self.accounting = Accounting(**fields)
        # Checkpoints written before the marks held every seen id instead: their buffered groups
        # still set the marks, and a resumed run dispatches under a new prefix anyway.
        self._dispatched_up_to = {shape: tuple(numbers) for shape, numbers
                                  in state.get("dispatched_up_to", {}).items()}
        self._groups = {}
        for g in state["groups"]:
            shape, numbers = dispatch_position(g["group_id"])
            self._dispatched_up_to[shape] = max(numbers, self._dispatched_up_to.get(shape, numbers))
            self._groups[g["group_id"]] = _Group(
                g["group_id"], g["size"], [Trajectory.from_dict(t) for t in g["valid"]],
                g["invalid"], set(g["outstanding"]))
        if lose_outstanding:
            for group_id, episode_id in self.outstanding_episodes():
                self.mark_lost(group_id, episode_id)


def staleness_histogram(groups: list[AssembledGroup], current_version: int) -> dict[str, int]:
    """Counts of consumed samples (padding excluded) by staleness, keys as strings for JSON."""
    counts: collections.Counter[int] = collections.Counter()
    for group in groups:
        for sample in group.samples[:len(group.samples) - group.num_padded]:
            counts[sample.staleness(current_version)] += 1
    return {str(k): counts[k] for k in sorted(counts)}
