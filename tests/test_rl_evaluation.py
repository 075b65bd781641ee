"""Fixed evaluation of RL runs: the held-out split, snapshot bookkeeping, and scoring with the
real sandbox and a scripted sampler."""

import numpy as np
import pytest

from glm5_jax.eval.pool import SandboxPool
from glm5_jax.rl.char_tokenizer import CharTokenizer
from glm5_jax.rl.environments import CodeEnvironment
from glm5_jax.rl.evaluation import (
    evaluate_policy,
    keep_snapshot,
    read_snapshots,
    summarise,
)
from glm5_jax.rl.experiment_setup import split_held_out
from glm5_jax.rl.feedback import label_feedback
from glm5_jax.rl.rewards import RewardWeights
from glm5_jax.rl.tasks import CodeTask, tiny_task_suite
from glm5_jax.rl.trajectory import Trajectory, Turn

TOKENIZER = CharTokenizer()


def test_held_out_split_is_disjoint_stratified_and_depends_only_on_ids():
    tasks = tiny_task_suite((1, 2, 3))
    train, held = split_held_out(tasks, 0.2)
    assert {t.task_id for t in train}.isdisjoint({t.task_id for t in held})
    assert len(train) + len(held) == len(tasks)
    for level in (1, 2, 3):
        size = sum(t.difficulty == level for t in tasks)
        assert sum(t.difficulty == level for t in held) == round(0.2 * size)
    # Same ids held out whatever the order of the suite or which other levels are in it.
    _, held_reversed = split_held_out(list(reversed(tasks)), 0.2)
    assert {t.task_id for t in held_reversed} == {t.task_id for t in held}
    _, held_level_1 = split_held_out(tiny_task_suite((1,)), 0.2)
    assert {t.task_id for t in held_level_1} == {t.task_id for t in held if t.difficulty == 1}
    assert split_held_out(tasks, 0.0) == (tasks, [])


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_held_out_fraction_out_of_range_names_the_field(fraction):
    with pytest.raises(ValueError, match="tasks.held_out_fraction"):
        split_held_out(tiny_task_suite((1,)), fraction)


def test_snapshots_are_links_to_published_weights_and_a_redone_step_wins(tmp_path):
    published = tmp_path / "policy_v3.msgpack"
    published.write_bytes(b"weights-3")
    keep_snapshot(tmp_path, published, 0, 0, 0.0, 0)
    keep_snapshot(tmp_path, published, 20, 3, 12.5, 640)
    published.write_bytes(b"weights-3-redone")  # a resumed run redid step 20
    keep_snapshot(tmp_path, published, 20, 3, 13.0, 640)
    snapshots = read_snapshots(tmp_path)
    assert [s["step"] for s in snapshots] == [0, 20]
    assert snapshots[1] == {"step": 20, "policy_version": 3, "wall_time": 13.0, "samples": 640,
                            "file": "step_20.msgpack"}
    assert (tmp_path / "eval_snapshots" / snapshots[1]["file"]).read_bytes() == b"weights-3-redone"
    with open(tmp_path / "eval_snapshots" / "index.jsonl", "a") as handle:
        handle.write("{not json\n")
    with pytest.raises(ValueError, match=r"index.jsonl:4: malformed snapshot entry"):
        read_snapshots(tmp_path)


def _trajectory(task_id, reward, passed, crashed=False, turns=1):
    turn_list = [Turn([0], [5], [-0.1], 0, 0.0) for _ in range(turns - 1)]
    turn_list.append(Turn([0], [5], [-0.1], 0, reward))
    return Trajectory(f"{task_id}:{reward}", "g", task_id, turn_list,
                      {"correct": float(passed)}, passed=passed, env_crashed=crashed)


def test_summary_counts_crashed_sandboxes_but_does_not_score_them():
    tasks = [CodeTask(name, "", (), "", difficulty=level)
             for name, level in (("a", 1), ("b", 3), ("c", 3), ("d", 3))]
    summary = summarise([_trajectory("a", 1.0, True), _trajectory("a", 0.2, False, turns=2),
                         _trajectory("b", 0.0, False), _trajectory("b", 0.0, False, crashed=True)],
                        tasks)
    assert (summary["pass_rate/level_1"], summary["pass_rate/level_3"]) == (0.5, 0.0)
    assert "pass_rate/level_2" not in summary
    assert summary["reward"] == pytest.approx(1.2 / 3)
    rewards = np.array([1.0, 0.2, 0.0])
    assert summary["reward_stderr"] == pytest.approx(rewards.std(ddof=1) / np.sqrt(3))
    assert summary["pass_rate"] == pytest.approx(1 / 3)
    assert summary["reward/correct"] == pytest.approx(1 / 3)
    assert summary["tasks_solved_fraction"] == pytest.approx(1 / 4)
    assert summary["mean_turns"] == pytest.approx(4 / 3)
    assert (summary["episodes"], summary["crashed"]) == (4.0, 1.0)


class PromptAnsweringSampler:
    """Answers a task's reference solution to the prompts in ``solved``, a wrong one otherwise;
    records the seeds it was called with."""

    def __init__(self, tasks, solved):
        self.by_prompt = {task.prompt: (task.reference if task.task_id in solved else "def f(x):return 0")
                          for task in tasks}
        self.seeds = []

    def sample(self, variables, prompts, seed):
        self.seeds.append(seed)
        out = []
        for prompt in prompts:
            tokens = TOKENIZER.encode(self.by_prompt[TOKENIZER.decode(prompt)]) + [TOKENIZER.eos_id]
            out.append((tokens, [-0.5] * len(tokens)))
        return out


def test_evaluate_policy_scores_every_task_with_fixed_seeds():
    tasks = [t for t in tiny_task_suite((1,)) if t.task_id in ("add3", "sub2", "mul4", "neg")]
    sampler = PromptAnsweringSampler(tasks, solved={"add3", "neg"})

    def make_env(task):
        return CodeEnvironment(task, "single_turn", 1, RewardWeights(), label_feedback)

    with SandboxPool(workers=2) as sandbox:
        first = evaluate_policy({}, tasks, make_env, sampler, sandbox, TOKENIZER,
                                samples_per_task=3, seed=11, max_context=64)
        second = evaluate_policy({}, tasks, make_env, sampler, sandbox, TOKENIZER,
                                 samples_per_task=3, seed=11, max_context=64)
    assert first["episodes"] == 12 and first["crashed"] == 0
    assert first["pass_rate"] == pytest.approx(0.5)
    assert first["tasks_solved_fraction"] == pytest.approx(0.5)
    assert first["reward/correct"] == pytest.approx(0.5)
    assert first == second
    assert sampler.seeds == [11, 11]  # one batched turn per call, always the same seed
    with pytest.raises(ValueError, match="eval.samples_per_task"):
        evaluate_policy({}, tasks, make_env, sampler, None, TOKENIZER, 0, 11, 64)

