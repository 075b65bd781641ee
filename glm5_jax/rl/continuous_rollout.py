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
``(order.seed + 7919 * t, i)``, whatever else is running.
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
    stats = RolloutStats()
    episodes = start_episodes(orders, make_env, tokenizer)
    seeds, indices = [], []
    for order in orders:
        seeds += [order.seed] * len(order.episode_ids)
        indices += list(range(len(order.episode_ids)))
    turns = [0] * len(episodes)
    batcher = sampler.batcher

    def submit(e: int) -> None:
        request = sampler.request(episodes[e].context, seeds[e] + TURN_SEED_STRIDE * turns[e], indices[e], tag=e)
        batcher.submit(request)

    policy.refresh()
    sampler.use(policy.variables, int(policy.version))
    recomputed_before = batcher.recomputed_tokens
    for e in range(len(episodes)):
        submit(e)
    verdicts: dict[concurrent.futures.Future, tuple] = {}
    live = len(episodes)
    while live:
        if refresh_between_steps and policy.refresh():
            if batcher.running:
                stats.weight_switches += 1
            sampler.use(policy.variables, int(policy.version))
        if not batcher.idle:
            start = time.perf_counter()
            finished = batcher.step()
            stats.generate_s += time.perf_counter() - start
            for completion in finished:
                e = completion.request.tag
                text = tokenizer.decode(completion.token_ids)
                verdicts[_verdict(executor, episodes[e].env.job(text))] = (completion, text, time.perf_counter())
            ready = [future for future in verdicts if future.done()]
        else:
            start = time.perf_counter()
            ready, _ = concurrent.futures.wait(verdicts, return_when=concurrent.futures.FIRST_COMPLETED)
            stats.environment_s += time.perf_counter() - start
        for future in ready:
            completion, text, sent = verdicts.pop(future)
            e = completion.request.tag
            episode = episodes[e]
            episode.generate_s += completion.finished_s - completion.submitted_s
            episode.environment_s += time.perf_counter() - sent
            stats.generated_tokens += len(completion.token_ids)
            stats.interrupted_turns += len(set(completion.token_versions)) > 1
            turns[e] += 1
            stats.turns = max(stats.turns, turns[e])
            if finish_turn(episode, completion.token_ids, completion.logprobs, completion.token_versions, text,
                           future.result(), tokenizer, emit, worker_id, max_context):
                submit(e)
            else:
                live -= 1
    stats.recomputed_tokens = batcher.recomputed_tokens - recomputed_before
    return stats
