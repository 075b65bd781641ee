"""Staleness enforced at admission: start a rollout only if it can be consumed within the bound.

AReaL's rule (Fu et al. 2025, "AReaL: a large-scale asynchronous RL system for language
reasoning"): a new rollout is dispatched only if the policy
version it starts under plus ``max_staleness`` is at least the learner version that will
consume it. The buffer's own rule (drop what is too stale when it is taken) stays as the
backstop; this one keeps the tokens from being generated in the first place.

When will a group be consumed? The learner takes ``groups_per_batch`` groups per step, oldest
complete group first, so with groups finishing in dispatch order the ``j``-th pending group
(0-based, dispatch order) is consumed ``j // groups_per_batch`` batches after the next one. A
worker starting now samples with at least the version the learner last took (the learner
publishes a version before it takes a batch with it). Between now and that consumption the
learner's version grows by at most one per ``sync_every`` step boundaries it crosses:

* the learner is *waiting* for a batch (or has not taken one yet): the next batch is consumed
  at the version it waits with, and ``m = j // groups_per_batch`` boundaries follow;
* the learner is *training* on a batch: a publish may come before the next batch, so
  ``m + 1`` boundaries.

The newest of the order's groups decides: ``ceil(boundaries / sync_every) <= max_staleness``.
A group that finishes out of order (a straggler overtaken by later groups) can still be
consumed later than predicted; the buffer then drops it and counts its tokens as wasted.
"""

from __future__ import annotations


def staleness_at_consumption(pending_groups: int, new_groups: int, groups_per_batch: int,
                             sync_every: int, learner_waiting: bool) -> int:
    """Upper bound on how many versions old the last of ``new_groups`` groups, dispatched behind
    ``pending_groups`` dispatched-but-unconsumed ones, will be when the learner takes it."""
    if groups_per_batch < 1 or sync_every < 1 or new_groups < 1 or pending_groups < 0:
        raise ValueError(f"groups_per_batch={groups_per_batch}, sync_every={sync_every} and "
                         f"new_groups={new_groups} must be >= 1, pending_groups={pending_groups} >= 0")
    batches_ahead = (pending_groups + new_groups - 1) // groups_per_batch
    boundaries = batches_ahead + (0 if learner_waiting else 1)
    return -(-boundaries // sync_every)


def admissible(pending_groups: int, new_groups: int, groups_per_batch: int, sync_every: int,
               max_staleness: int, learner_waiting: bool) -> bool:
    """AReaL's admission rule: may ``new_groups`` start now?"""
    return staleness_at_consumption(pending_groups, new_groups, groups_per_batch, sync_every,
                                    learner_waiting) <= max_staleness
