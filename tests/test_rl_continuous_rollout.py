"""Rollouts over continuous batching with a real tiny policy and the real sandbox: the sampler
draws what the batch sampler draws, weights published mid-generation take over between decode
steps and are recorded per token, and per-token versions survive the trajectory's dict form
(old dicts without them still load)."""

import jax
import numpy as np
import pytest
from hf_reference import relative_error

import glm5_jax
from glm5_jax.config import tiny
from glm5_jax.eval.pool import SandboxPool
from glm5_jax.rl.buffer import TrajectoryBuffer
from glm5_jax.rl.char_tokenizer import CharTokenizer
from glm5_jax.rl.continuous_rollout import ContinuousRollout
from glm5_jax.rl.environments import CodeEnvironment
from glm5_jax.rl.feedback import label_feedback
from glm5_jax.rl.rewards import RewardWeights
from glm5_jax.rl.rollout import GroupOrder, run_orders
from glm5_jax.rl.sampler import ContinuousPolicySampler, PolicySampler
from glm5_jax.rl.tasks import tiny_task_suite
from glm5_jax.rl.trajectory import Trajectory, Turn

TOKENIZER = CharTokenizer()
CONFIG = tiny().replace(vocab_size=TOKENIZER.vocab_size, bos_token_id=TOKENIZER.bos_id,
                        eos_token_id=TOKENIZER.eos_id, pad_token_id=TOKENIZER.pad_id)
MAX_NEW, MAX_CONTEXT, STEPS_PER_CALL = 8, 40, 2
LOGPROB_RTOL = 1e-5  # float32


@pytest.fixture(scope="module")
def variables():
    return glm5_jax.init_variables(glm5_jax.GLM5Model(CONFIG), jax.random.PRNGKey(1))


@pytest.fixture(scope="module")
def sampler():
    return ContinuousPolicySampler(CONFIG, slots=3, max_new_tokens=MAX_NEW, max_context=MAX_CONTEXT,
                                   steps_per_call=STEPS_PER_CALL)


def test_continuous_sampler_draws_what_the_batch_sampler_draws(variables, sampler):
    rng = np.random.RandomState(0)
    prompts = [[TOKENIZER.bos_id] + list(rng.randint(3, 100, size=n)) for n in (6, 20, 3, 11, 30)]
    batch = PolicySampler(CONFIG, batch_rows=4, max_new_tokens=MAX_NEW).sample(variables, prompts, seed=11)
    continuous = sampler.sample(variables, prompts, seed=11)  # 3 slots: prompts queue and join
    assert [tokens for tokens, _ in continuous] == [tokens for tokens, _ in batch]
    for (_, a), (_, b) in zip(continuous, batch):
        assert relative_error(a, b) <= LOGPROB_RTOL


class PublishesMidGeneration:
    """Version 0 at first; version 1 (other weights) from the ``switch_at``-th refresh on."""

    def __init__(self, variables, new_variables, switch_at):
        self.versions = {0: variables, 1: new_variables}
        self.switch_at, self.calls = switch_at, 0
        self.version, self.variables = None, None

    def refresh(self):
        self.calls += 1
        version = int(self.calls >= self.switch_at)
        changed = version != self.version
        self.version, self.variables = version, self.versions[version]
        return changed


def test_weights_published_mid_generation_are_recorded_per_token(variables, sampler):
    tasks = tiny_task_suite([1])
    task_index = next(i for i, t in enumerate(tasks) if t.task_id == "add3")

    def make_env(index):
        return CodeEnvironment(tasks[index], "debug", 2, RewardWeights(), label_feedback, feedback_chars=8)

    new_variables = jax.tree_util.tree_map(lambda w: w * 1.5, variables)
    # Refresh 1 starts the run, 2 precedes the first decode call, 3 the second: by then each
    # first turn holds 1 + 2 tokens of version 0.
    policy = PublishesMidGeneration(variables, new_variables, switch_at=3)
    orders = [GroupOrder("g0", task_index, ("g0e0", "g0e1", "g0e2", "g0e3"), seed=4)]
    emitted = []
    with SandboxPool(workers=2) as pool:
        stats = run_orders(orders, make_env, policy, sampler, pool, TOKENIZER, emitted.append,
                           refresh_each_turn=True, max_context=MAX_CONTEXT)
    assert sorted(t.episode_id for t in emitted) == list(orders[0].episode_ids)
    first_turns = [t.turns[0] for t in emitted]
    # Slots 0-2 started under version 0; the fourth episode waited for a slot and started later.
    interrupted = [turn for turn in first_turns if turn.token_versions is not None]
    assert len(interrupted) == 3 == stats.interrupted_turns and stats.weight_switches == 1
    for turn in interrupted:
        assert turn.token_versions == [0] * 3 + [1] * (len(turn.action_tokens) - 3)
        assert turn.policy_version == 0 and turn.versions_per_token == turn.token_versions
    later = [turn for t in emitted for turn in t.turns if turn.token_versions is None]
    assert later and all(turn.policy_version == 1 for turn in later)
    assert stats.generated_tokens == sum(t.num_action_tokens for t in emitted)
    assert stats.turns == max(len(t.turns) for t in emitted)
    # The switch re-prefilled each interrupted request's prompt and its 2 fed tokens.
    assert stats.recomputed_tokens == sum(len(t.turns[0].observation_tokens) + 2 for t in emitted
                                          if t.turns[0].token_versions is not None)

    # The oldest token decides staleness: at version 3 with max_staleness 2 the interrupted
    # episodes are stale although most of their tokens are not.
    buffer = TrajectoryBuffer(group_size=4, max_staleness=2, capacity_groups=1)
    buffer.expect("g0", list(orders[0].episode_ids))
    for trajectory in emitted:
        buffer.add(trajectory)
    assert buffer.take(1, current_version=3) is None
    assert buffer.accounting.dropped["stale"] == 3


def test_an_order_added_while_another_runs_joins_its_batch_and_changes_no_trajectory(variables, sampler):
    """A worker holding two orders (``ContinuousRollout.add`` mid-run): each trajectory is the
    one its order gives alone, the short order is reported as soon as its last episode ends
    while the long one still decodes, and the reports add up to everything generated."""
    tasks = tiny_task_suite([1])

    def make_env(index):
        return CodeEnvironment(tasks[index], "debug", 2, RewardWeights(), label_feedback, feedback_chars=8)

    first = [GroupOrder("a", 0, ("a0", "a1"), seed=4)]
    second = [GroupOrder("b", 1, ("b0", "b1", "b2"), seed=9)]

    def alone(orders):
        emitted = []
        with SandboxPool(workers=2) as pool:
            run_orders(orders, make_env, PublishesMidGeneration(variables, variables, 10**9), sampler, pool,
                       TOKENIZER, emitted.append, max_context=MAX_CONTEXT)
        return {t.episode_id: t for t in emitted}

    expected = {**alone(first), **alone(second)}
    emitted, reports = [], []
    with SandboxPool(workers=2) as pool:
        # Verdicts in the step that asks for them (an executor with only ``map``): with a
        # background sandbox, when a verdict lands depends on the host's load, and so would
        # which order ends first.
        in_step = type("InStep", (), {"map": staticmethod(pool.map)})()
        rollout = ContinuousRollout(make_env, PublishesMidGeneration(variables, variables, 10**9), sampler,
                                    in_step, TOKENIZER, emitted.append, max_context=MAX_CONTEXT)
        rollout.add("A", first)
        reports += rollout.step()  # "A" is decoding when "B" arrives
        assert rollout.live_orders == 1 and sampler.batcher.running
        rollout.add("B", second)
        while not rollout.idle:
            done_before = {t.episode_id for t in emitted}
            for key, stats in rollout.step():
                reports.append((key, stats))
                if key == "A":  # reported while "B" still runs, not when the worker is idle
                    assert rollout.live_orders == 1 and not rollout.idle
                # An order is reported in the step its last episode ends.
                ended = {t.episode_id for t in emitted} - done_before
                assert {e[0].upper() for e in ended} >= {key}
    assert [key for key, _ in reports] == ["A", "B"]
    assert sorted(t.episode_id for t in emitted) == sorted(expected)
    for trajectory in emitted:
        alone_turns = expected[trajectory.episode_id].turns
        assert [t.action_tokens for t in trajectory.turns] == [t.action_tokens for t in alone_turns]
        assert [t.reward for t in trajectory.turns] == [t.reward for t in alone_turns]
        for turn, alone_turn in zip(trajectory.turns, alone_turns):
            assert relative_error(turn.action_logprobs, alone_turn.action_logprobs) <= LOGPROB_RTOL
    assert sum(stats.generated_tokens for _, stats in reports) == sum(t.num_action_tokens for t in emitted)


def test_per_token_versions_round_trip_and_old_dicts_load():
    turn = Turn.sampled([5], [7, 8, 9], [-0.1, -0.2, -0.3], [2, 2, 3], reward=1.0)
    assert turn.policy_version == 2 and turn.token_versions == [2, 2, 3]
    assert Turn.sampled([5], [7], [-0.1], [4]).token_versions is None  # one version: None
    trajectory = Trajectory("e", "g", "task", [turn], {"correct": 1.0})
    assert Trajectory.from_dict(trajectory.to_dict()) == trajectory
    old = trajectory.to_dict()
    del old["turns"][0]["token_versions"]  # as buffers checkpointed before the field existed
    restored = Trajectory.from_dict(old)
    assert restored.turns[0].token_versions is None
    assert restored.turns[0].versions_per_token == [2, 2, 2]
    with pytest.raises(ValueError, match="2 token versions for 3 action tokens"):
        Turn.sampled([5], [7, 8, 9], [0.0] * 3, [1, 1])
