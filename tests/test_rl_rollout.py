"""Rollouts with a scripted sampler and the real sandbox: multi-turn debugging, mid-episode
weight switches, token-in/token-out trajectories, and the learner's batch built from them."""

import numpy as np
import pytest

from glm5_jax.eval.pool import SandboxPool
from glm5_jax.rl.batching import build_batch
from glm5_jax.rl.buffer import TrajectoryBuffer
from glm5_jax.rl.char_tokenizer import CharTokenizer
from glm5_jax.rl.environments import CodeEnvironment
from glm5_jax.rl.feedback import label_feedback
from glm5_jax.rl.rewards import RewardWeights
from glm5_jax.rl.rollout import GroupOrder, run_orders
from glm5_jax.rl.tasks import tiny_task_suite

TOKENIZER = CharTokenizer()


class ScriptedSampler:
    """Answers per (episode row, turn) from a script; log-prob -0.5 per token."""

    def __init__(self, script):
        self.script = script  # list over turns of list over rows of completion text
        self.turn = 0
        self.prompts = []

    def sample(self, variables, prompts, seed):
        self.prompts.append([list(p) for p in prompts])
        answers = self.script[self.turn]
        self.turn += 1
        out = []
        for i in range(len(prompts)):
            tokens = TOKENIZER.encode(answers[i]) + [TOKENIZER.eos_id]
            out.append((tokens, [-0.5] * len(tokens)))
        return out


class SwitchingPolicy:
    """Publishes a new version before every refresh after the first."""

    def __init__(self):
        self.version, self.variables, self.calls = None, {}, 0

    def refresh(self):
        self.version = self.calls
        self.calls += 1
        return True


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2) as sandbox:
        yield sandbox


def test_debug_episodes_stream_when_done_and_record_versions(pool):
    tasks = tiny_task_suite([1])
    task_index = next(i for i, t in enumerate(tasks) if t.task_id == "add3")

    def make_env(index):
        return CodeEnvironment(tasks[index], "debug", 3, RewardWeights(), label_feedback)

    order = GroupOrder("g0", task_index, ("g0e0", "g0e1", "g0e2"), seed=1)
    # Row 0 passes at once; row 1 fails then passes; row 2 fails three times.
    sampler = ScriptedSampler([
        ["def f(x):return x+3", "def f(x):return x+2", "def f(x):return 0"],
        ["def f(x):return x+3", "def f(x):return 1"],
        ["def f(x):return 2"],
    ])
    emitted = []
    stats = run_orders([order], make_env, SwitchingPolicy(), sampler, pool, TOKENIZER, emitted.append)
    assert [t.episode_id for t in emitted] == ["g0e0", "g0e1", "g0e2"]  # in order of finishing
    assert [len(t.turns) for t in emitted] == [1, 2, 3]
    assert [t.passed for t in emitted] == [True, True, False]
    assert emitted[2].policy_versions == [0, 1, 2]  # weights changed mid-episode, recorded
    assert stats.turns == 3 and stats.generated_tokens == sum(t.num_action_tokens for t in emitted)

    # Token in, token out: the second prompt of row 1 is its first prompt, its own sampled
    # tokens unchanged, then the failure report.
    second_prompt = sampler.prompts[1][0]
    first = sampler.prompts[0][1]
    answer = TOKENIZER.encode("def f(x):return x+2") + [TOKENIZER.eos_id]
    assert second_prompt[:len(first) + len(answer)] == first + answer
    assert TOKENIZER.decode(second_prompt[len(first) + len(answer):]).startswith("\n#fail assert")
    assert emitted[1].turns[0].action_tokens == answer

    # Delayed credit: only the final turn carries the outcome.
    assert emitted[1].turns[0].reward == 0.0 and emitted[1].turns[1].reward > 1.5

    buffer = TrajectoryBuffer(group_size=3, max_staleness=5, capacity_groups=2)
    buffer.expect("g0", list(order.episode_ids))
    for trajectory in emitted:
        buffer.add(trajectory)
    groups = buffer.take(1, current_version=2)
    batch, info = build_batch(groups, seq_len=160, gamma=0.5, normalize_by_std=True,
                              pad_id=TOKENIZER.pad_id)
    assert info.samples == 3 and info.pass_rate == pytest.approx(2 / 3)
    # Feedback and prompt tokens never enter the loss; every sampled token does.
    for row, trajectory in enumerate(emitted):
        tokens, is_action, logprobs, _ = trajectory.flatten()
        assert batch["loss_mask"][row].sum() == is_action[1:].sum() == trajectory.num_action_tokens
        feedback_positions = np.flatnonzero(~is_action[1:])
        assert not batch["loss_mask"][row, feedback_positions].any()
        np.testing.assert_array_equal(batch["rollout_logprobs"][row][batch["loss_mask"][row] > 0], -0.5)
    # Row 1's first turn earns gamma * R, less than row 0's immediate R.
    first_turn_adv = [batch["advantages"][r][batch["loss_mask"][r] > 0][0] for r in range(3)]
    assert first_turn_adv[0] > first_turn_adv[1] > first_turn_adv[2]
    ends = [int(batch["loss_mask"][1].nonzero()[0][-1])]
    assert batch["advantages"][1, ends[0]] > first_turn_adv[1]  # the repaired turn earns more


def test_crashed_sandbox_marks_the_trajectory(pool):
    from glm5_jax.eval.results import ExecutionResult

    class BrokenSandbox:
        def map(self, jobs):
            return [ExecutionResult.infrastructure_error("helper died") for _ in jobs]

    tasks = tiny_task_suite([0])
    emitted = []
    run_orders([GroupOrder("g", 0, ("g:0",), 0)],
               lambda i: CodeEnvironment(tasks[i], "single_turn", 1, RewardWeights(), label_feedback),
               SwitchingPolicy(), ScriptedSampler([["def f():return 0"]]), BrokenSandbox(),
               TOKENIZER, emitted.append)
    assert emitted[0].env_crashed and not emitted[0].passed
