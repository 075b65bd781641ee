"""Episodes over continuous batching: no turn waits for another episode's turn.

Every episode's next generation is a request to the worker's ``ContinuousBatcher``. When a
generation finishes, its verdict is computed in the sandbox while the other episodes keep
decoding; when the verdict is back the episode either ends (its trajectory is emitted at once)
or joins the running batch again with its next prompt. The host loop alternates one decode
call with collecting finished generations and verdicts; it only blocks on the sandbox when
nothing is left to decode.

Between decode calls the worker asks the policy for newer weights (``refresh_between_steps``);
the batcher takes them over at once (recomputing the running requests' caches) and records
per token which version sampled it, so a turn can span versions (``Turn.token_versions``, its
``policy_version`` the oldest).

Sampling keys: turn ``t`` of the ``i``-th episode of an order draws as request
``(order.seed + 7919 * t, i)``, whatever else is running, so a trajectory does not depend on
which other orders share the batch.

A worker can hold several orders at once (``ContinuousRollout.add`` while others run:
``config.sampler.orders_in_flight``): the slots a finished order frees go to the next order
instead of idling until the last straggler of the current one ends.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence

from glm5_jax.rl.environments import CodeEnvironment
from glm5_jax.rl.rollout import (
    GroupOrder,
    Policy,
    RolloutStats,
    finish_turn,
    start_episodes,
)
from glm5_jax.rl.trajectory import Trajectory

TURN_SEED_STRIDE = 7919  # as rollout.run_orders


def _verdict(executor, job) -> concurrent.futures.Future:
    """The sandbox's verdict on ``job`` as a future (run at once if the executor only maps)."""
    if hasattr(executor, "submit"):
        return executor.submit(job)
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result(executor.map([job])[0])
    return future


def run_orders_continuous(orders: Sequence[GroupOrder], make_env: Callable[[int], CodeEnvironment],
                          policy: Policy, sampler, executor, tokenizer,
                          emit: Callable[[Trajectory], None], worker_id: int = -1,
                          refresh_between_steps: bool = True,
                          max_context: int | None = None) -> RolloutStats:
    """``rollout.run_orders`` with a ``ContinuousPolicySampler``: same trajectories' shape,
    same accounting, no lock-step between episodes."""
    rollout = ContinuousRollout(make_env, policy, sampler, executor, tokenizer, emit, worker_id,
                                refresh_between_steps, max_context)
    rollout.add("", orders)
    stats = RolloutStats()
    while not rollout.idle:
        for _, finished_stats in rollout.step():
            stats = finished_stats
    return stats


class ContinuousRollout:
    """Episodes of any number of orders in one running batch; orders can be added at any time
    (a worker takes its next order while the last one's stragglers still decode).

    ``step`` advances everything once (a decode call, or a wait for the sandbox when nothing
    decodes) and returns the orders whose last episode just ended, each with the statistics
    gathered since the previous order ended (so the reports sum to the worker's totals)."""

    def __init__(self, make_env: Callable[[int], CodeEnvironment], policy: Policy, sampler, executor,
                 tokenizer, emit: Callable[[Trajectory], None], worker_id: int = -1,
                 refresh_between_steps: bool = True, max_context: int | None = None) -> None:
        self.make_env, self.policy, self.sampler, self.executor = make_env, policy, sampler, executor
        self.tokenizer, self.emit, self.worker_id = tokenizer, emit, worker_id
        self.refresh_between_steps, self.max_context = refresh_between_steps, max_context
        self.batcher = sampler.batcher
        self._episodes: dict[int, tuple] = {}  # tag -> (episode, order key, seed, index in order)
        self._turns: dict[int, int] = {}
        self._live_by_order: dict[str, int] = {}
        self._next_tag = 0
        self._verdicts: dict[concurrent.futures.Future, tuple] = {}
        self._unreported = RolloutStats()
        self._recomputed_reported = self.batcher.recomputed_tokens

    @property
    def idle(self) -> bool:
        return not self._live_by_order

    @property
    def live_orders(self) -> int:
        return len(self._live_by_order)

    def add(self, order_key: str, orders: Sequence[GroupOrder]) -> None:
        """Start every episode of ``orders`` (reported together as ``order_key``)."""
        if order_key in self._live_by_order:
            raise ValueError(f"order {order_key!r} is already running")
        if self.idle:  # an order that starts alone starts on the newest weights
            self.policy.refresh()
            self.sampler.use(self.policy.variables, int(self.policy.version))
        episodes = start_episodes(orders, self.make_env, self.tokenizer)
        position = 0
        for order in orders:
            for index in range(len(order.episode_ids)):
                tag = self._next_tag
                self._next_tag += 1
                self._episodes[tag] = (episodes[position], order_key, order.seed, index)
                self._turns[tag] = 0
                position += 1
                self._submit(tag)
        if episodes:
            self._live_by_order[order_key] = len(episodes)

    def _submit(self, tag: int) -> None:
        episode, _, seed, index = self._episodes[tag]
        self.batcher.submit(self.sampler.request(
            episode.context, seed + TURN_SEED_STRIDE * self._turns[tag], index, tag=tag))

    def step(self) -> list[tuple[str, RolloutStats]]:
        stats = self._unreported
        if self.refresh_between_steps and self.policy.refresh():
            if self.batcher.running:
                stats.weight_switches += 1
            self.sampler.use(self.policy.variables, int(self.policy.version))
        if not self.batcher.idle:
            start = time.perf_counter()
            finished = self.batcher.step()
            stats.generate_s += time.perf_counter() - start
            for completion in finished:
                episode = self._episodes[completion.request.tag][0]
                text = self.tokenizer.decode(completion.token_ids)
                self._verdicts[_verdict(self.executor, episode.env.job(text))] = (
                    completion, text, time.perf_counter())
            ready = [future for future in self._verdicts if future.done()]
        else:
            start = time.perf_counter()
            ready, _ = concurrent.futures.wait(self._verdicts, return_when=concurrent.futures.FIRST_COMPLETED)
            stats.environment_s += time.perf_counter() - start
        done_orders = []
        for future in ready:
            completion, text, sent = self._verdicts.pop(future)
            tag = completion.request.tag
            episode, order_key, _, _ = self._episodes[tag]
            episode.generate_s += completion.finished_s - completion.submitted_s
            episode.environment_s += time.perf_counter() - sent
            stats.generated_tokens += len(completion.token_ids)
            stats.interrupted_turns += len(set(completion.token_versions)) > 1
            self._turns[tag] += 1
            stats.turns = max(stats.turns, self._turns[tag])
            if finish_turn(episode, completion.token_ids, completion.logprobs, completion.token_versions, text,
                           future.result(), self.tokenizer, self.emit, self.worker_id, self.max_context):
                self._submit(tag)
                continue
            del self._episodes[tag], self._turns[tag]
            self._live_by_order[order_key] -= 1
            if not self._live_by_order[order_key]:
                del self._live_by_order[order_key]
                done_orders.append(order_key)
        reports = []
        for order_key in done_orders:  # the first report takes everything since the last one
            report, self._unreported = self._unreported, RolloutStats()
            report.recomputed_tokens = self.batcher.recomputed_tokens - self._recomputed_reported
            self._recomputed_reported = self.batcher.recomputed_tokens
            reports.append((order_key, report))
        return reports
