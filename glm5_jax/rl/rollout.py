"""Running episodes: batched generation across environments, sandboxed verdicts, trajectories.

A worker receives ``GroupOrder``s (a task, a group id, the episode ids of its samples). All
episodes of its orders step together: one batched generation per turn for every episode
still running, one batch of sandbox runs, then each environment decides whether its episode
is over. A finished episode is handed to ``emit`` at once, so short episodes reach the
buffer while long ones are still debugging.

Before every turn the worker may pick up newer weights (``refresh_each_turn``); each turn
records the version that sampled it, so a mid-episode switch is visible to the learner. With a
continuous sampler the same episodes run through ``continuous_rollout`` (weights may then change
mid-turn; each token records its version).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from glm5_jax.rl.environments import CodeEnvironment
from glm5_jax.rl.trajectory import Trajectory, Turn


@dataclasses.dataclass(frozen=True)
class GroupOrder:
    group_id: str
    task_index: int
    episode_ids: tuple[str, ...]
    seed: int


class Policy(Protocol):
    version: int | None
    variables: dict | None

    def refresh(self) -> bool: ...


class Sampler(Protocol):
    def sample(self, variables: dict, prompts: Sequence[Sequence[int]],
               seed: int) -> list[tuple[list[int], list[float]]]: ...


class Executor(Protocol):
    def map(self, jobs: Sequence) -> list: ...


@dataclasses.dataclass
class _Episode:
    episode_id: str
    group_id: str
    env: CodeEnvironment
    context: list[int]  # every token so far: the next generation's prompt
    observation: list[int]  # tokens shown since the last action
    turns: list[Turn] = dataclasses.field(default_factory=list)
    terms: dict[str, float] = dataclasses.field(default_factory=dict)
    generate_s: float = 0.0
    environment_s: float = 0.0


@dataclasses.dataclass
class RolloutStats:
    generated_tokens: int = 0
    generate_s: float = 0.0
    environment_s: float = 0.0
    turns: int = 0
    weight_switches: int = 0  # new weights taken while generations were running (continuous)
    interrupted_turns: int = 0  # turns whose tokens were sampled by more than one version
    recomputed_tokens: int = 0  # context tokens re-prefilled under new weights (continuous)


def run_orders(orders: Sequence[GroupOrder], make_env: Callable[[int], CodeEnvironment],
               policy: Policy, sampler: Sampler, executor: Executor, tokenizer,
               emit: Callable[[Trajectory], None], worker_id: int = -1,
               refresh_each_turn: bool = True, max_context: int | None = None) -> RolloutStats:
    """Play every episode of ``orders`` to its end, emitting each trajectory when it ends.

    A sampler with a continuous batcher (``ContinuousPolicySampler``) runs the episodes through
    ``continuous_rollout`` instead: no turn waits for the others, and with ``refresh_each_turn``
    new weights are picked up between decode steps.
    """
    if hasattr(sampler, "batcher"):
        from glm5_jax.rl.continuous_rollout import run_orders_continuous

        return run_orders_continuous(orders, make_env, policy, sampler, executor, tokenizer, emit,
                                     worker_id, refresh_each_turn, max_context)
    stats = RolloutStats()
    episodes = start_episodes(orders, make_env, tokenizer)
    seed = orders[0].seed if orders else 0
    turn = 0
    while episodes:
        if refresh_each_turn or turn == 0:
            policy.refresh()
        version = int(policy.version)
        start = time.perf_counter()
        samples = sampler.sample(policy.variables, [e.context for e in episodes], seed + 7919 * turn)
        generate_s = time.perf_counter() - start
        completions = [tokenizer.decode(tokens) for tokens, _ in samples]
        start = time.perf_counter()
        results = executor.map([e.env.job(c) for e, c in zip(episodes, completions)])
        environment_s = time.perf_counter() - start
        stats.generate_s += generate_s
        stats.environment_s += environment_s
        stats.turns += 1
        still_running = []
        for episode, (tokens, logprobs), completion, result in zip(episodes, samples, completions, results):
            stats.generated_tokens += len(tokens)
            episode.generate_s += generate_s / len(episodes)
            episode.environment_s += environment_s / len(episodes)
            if finish_turn(episode, tokens, logprobs, [version] * len(tokens), completion, result,
                           tokenizer, emit, worker_id, max_context):
                still_running.append(episode)
        episodes = still_running
        turn += 1
    return stats


def start_episodes(orders: Sequence[GroupOrder], make_env: Callable[[int], CodeEnvironment],
                   tokenizer) -> list[_Episode]:
    episodes = []
    for order in orders:
        for episode_id in order.episode_ids:
            env = make_env(order.task_index)
            observation = [tokenizer.bos_id] + tokenizer.encode(env.reset())
            episodes.append(_Episode(episode_id, order.group_id, env, list(observation), observation))
    return episodes


def finish_turn(episode: _Episode, tokens: Sequence[int], logprobs: Sequence[float],
                versions: Sequence[int], completion: str, result, tokenizer,
                emit: Callable[[Trajectory], None], worker_id: int, max_context: int | None) -> bool:
    """Record one turn from the sandbox's verdict; emit the trajectory if the episode is over.
    True if it goes on (its context then holds the answer and the next observation)."""
    outcome = episode.env.step(completion, result)
    episode.turns.append(Turn.sampled(episode.observation, list(tokens), list(logprobs), list(versions),
                                      outcome.reward))
    episode.terms = outcome.terms or episode.terms
    next_observation = tokenizer.encode(outcome.observation) if not outcome.done else []
    too_long = (max_context is not None and
                len(episode.context) + len(tokens) + len(next_observation) >= max_context)
    if outcome.done or too_long:
        if too_long and not outcome.done:  # out of room: the last attempt is final
            episode.turns[-1].reward, _ = _final_reward(episode.env, completion, result)
        emit(Trajectory(episode.episode_id, episode.group_id, episode.env.task.task_id,
                        episode.turns, dict(episode.terms), passed=outcome.passed,
                        env_crashed=outcome.crashed, worker_id=worker_id,
                        generate_s=episode.generate_s, environment_s=episode.environment_s))
        return False
    episode.context += list(tokens) + next_observation
    episode.observation = next_observation
    return True


def _final_reward(env: CodeEnvironment, completion: str, result) -> tuple[float, dict]:
    from glm5_jax.rl.rewards import hierarchical_reward

    return hierarchical_reward(env.task, completion, result, env.weights, env.feedback)
