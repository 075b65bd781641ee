"""Task suite, hierarchical reward and the three environments, judged by the real sandbox."""

import pytest

from glm5_jax.eval.pool import SandboxPool
from glm5_jax.eval.results import ExecutionResult, Status
from glm5_jax.rl.char_tokenizer import CharTokenizer
from glm5_jax.rl.environments import CodeEnvironment
from glm5_jax.rl.feedback import get_feedback_scorer, label_feedback
from glm5_jax.rl.rewards import RewardWeights, hierarchical_reward
from glm5_jax.rl.tasks import CodeTask, tiny_task_suite


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2) as sandbox:
        yield sandbox


def test_char_tokenizer_round_trips_and_never_fails():
    tok = CharTokenizer()
    text = "def f(s):return s[::-1]\n#fail x"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([tok.bos_id] + tok.encode("ab") + [tok.eos_id]) == "ab"
    assert tok.decode(tok.encode("é")) == "?"
    assert max(tok.encode(text)) < tok.vocab_size


def test_every_reference_solution_passes_its_tests(pool):
    tasks = tiny_task_suite()
    assert {t.difficulty for t in tasks} == {0, 1, 2, 3}
    assert len({t.task_id for t in tasks}) == len(tasks)
    results = pool.map([CodeEnvironment(t, "single_turn", 1, RewardWeights(), label_feedback)
                        .job(t.reference) for t in tasks])
    assert all(r.passed for r in results), [t.task_id for t, r in zip(tasks, results) if not r.passed]
    assert max(len(t.prompt) + len(t.reference) for t in tasks) < 40  # short for a tiny policy


def test_hierarchical_reward_puts_correctness_first():
    task = CodeTask("t", "#add 3\n", ("assert f(1)==4", "assert f(0)==3"), "def f(x):return x+3",
                    feedback_labels=("max_chars=21",))
    weights = RewardWeights()
    passed = ExecutionResult(Status.PASSED, "", 0.0, 2, 2)
    half = ExecutionResult(Status.FAILED, "x", 0.0, 1, 2)
    good, terms = hierarchical_reward(task, "def f(x):return x+3", passed, weights, label_feedback)
    assert terms == {"correct": 1.0, "fraction_passed": 1.0, "simplicity": 1.0,
                     "cleanliness": 1.0, "feedback": 1.0}
    assert good == pytest.approx(1.0 + 0.5 + 0.15)
    verbose, terms = hierarchical_reward(task, "def f(x):\n    if x: return x+3\n    return 3",
                                         passed, weights, label_feedback)
    assert terms["simplicity"] == 0.5 and terms["feedback"] < 1.0 and verbose < good
    # However ugly the passing answer, it beats a half-correct one.
    partial, terms = hierarchical_reward(task, "def f(x):return 4", half, weights, label_feedback)
    assert terms["fraction_passed"] == 0.5 and partial == pytest.approx(0.25)
    assert verbose > partial
    # Lower terms are gated on passing unless configured otherwise.
    ungated = RewardWeights(gate_lower_terms_on_pass=False)
    assert hierarchical_reward(task, "def f(x):return 4", half, ungated, label_feedback)[0] > partial
    unparsable = hierarchical_reward(task, "def f(x) return", half, ungated, label_feedback)[1]
    assert unparsable["simplicity"] == 0.0 and unparsable["cleanliness"] < 1.0


def test_feedback_labels():
    task = CodeTask("t", "", (), "", feedback_labels=("max_chars=10", "avoid=lambda"))
    assert label_feedback(task, "x" * 10) == 1.0
    assert label_feedback(task, "x" * 15) == pytest.approx((0.5 + 1.0) / 2)
    assert label_feedback(task, "lambda" + "x" * 30) == 0.0
    with pytest.raises(ValueError, match="known kinds"):
        label_feedback(CodeTask("t", "", (), "", feedback_labels=("mood=happy",)), "")
    assert get_feedback_scorer("none")(task, "anything") == 1.0


def test_debug_environment_reports_the_failing_test_then_accepts_a_fix(pool):
    task = next(t for t in tiny_task_suite([1]) if t.task_id == "add3")
    env = CodeEnvironment(task, "debug", 3, RewardWeights(), label_feedback)
    assert env.reset() == "#add 3\n"
    wrong = "def f(x):return x+2"
    outcome = env.step(wrong, pool.run(*_job(env, wrong)))
    assert not outcome.done and outcome.reward == 0.0
    assert outcome.observation.startswith("\n#fail assert f(0)==3: AssertionError")
    right = "def f(x):return x+3"
    outcome = env.step(right, pool.run(*_job(env, right)))
    assert outcome.done and outcome.passed and outcome.reward > 1.5


def test_single_turn_ends_after_one_attempt_and_test_driven_shows_tests(pool):
    task = next(t for t in tiny_task_suite([2]) if t.task_id == "rev")
    env = CodeEnvironment(task, "single_turn", 5, RewardWeights(), label_feedback)
    env.reset()
    outcome = env.step("def f(s):return s", pool.run(*_job(env, "def f(s):return s")))
    assert outcome.done and not outcome.passed and outcome.terms["fraction_passed"] == pytest.approx(1 / 3)
    shown = CodeEnvironment(task, "test_driven", 1, RewardWeights(), label_feedback).reset()
    assert shown == "#rev\nassert f('abc')=='cba'\nassert f('xy')=='yx'\n"
    crashed = env.step("x", ExecutionResult.infrastructure_error("helper died"))
    assert crashed.crashed and crashed.done
    with pytest.raises(ValueError, match="allowed"):
        CodeEnvironment(task, "chat", 1, RewardWeights(), label_feedback)


def _job(env, completion):
    job = env.job(completion)
    return job.program, job.tests


def test_mbpp_and_humaneval_adapters_judge_their_references(pool):
    from glm5_jax.rl.task_adapters import humaneval_tasks, mbpp_tasks

    mbpp = mbpp_tasks("train")
    humaneval = humaneval_tasks()
    assert len(mbpp) == 374 and len(humaneval) == 164
    chosen = mbpp[:2] + humaneval[:2]
    results = pool.map([CodeEnvironment(t, "single_turn", 1, RewardWeights(), label_feedback)
                        .job(t.reference) for t in chosen])
    assert all(r.passed for r in results), [r.reason for r in results]
    assert humaneval[0].program("    return 1").startswith(humaneval[0].prompt)
