"""The judge: tests run in a trusted interpreter, and only plain data crosses from the sample.

The hostile cases of hostile_cases/judge_cases.py run (with the host checks) in
test_sandbox_hostile.py; here: that they are real attacks (they pass when program and
tests share one interpreter, as before the judge), and what crosses the boundary and how.
"""

from __future__ import annotations

import collections
import decimal
import fractions
import json
import os
import subprocess
import sys

import pytest

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.pool import SandboxJob, SandboxPool
from glm5_jax.eval.sandbox_child import plain_data
from hostile_cases.judge_cases import FOOLED_ONE_INTERPRETER, JUDGE_CASES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The runner's loop before the judge, replayed outside any sandbox: program and tests
# share one namespace, each test is decoded by the protocol's decode_step (bound before
# the program ran, as the runner bound it) and compiled as "<step i>".
ONE_INTERPRETER = """
import json, sys
from glm5_jax.eval.sandbox_child import protocol
decode = protocol.decode_step
program, tests = json.loads(sys.stdin.read())
namespace = {"__name__": "__sandbox__"}
exec(compile(program, "<step 0>", "exec"), namespace)
passed = True
for number, test in enumerate(tests, 1):
    index, token, source = decode(protocol.encode_step(number, "token", test))
    try:
        exec(compile(source, f"<step {index}>", "exec"), namespace)
    except BaseException:
        passed = False
sys.settrace(None)
sys.setprofile(None)
sys.__stdout__.write("\\nVERDICT " + ("passed" if passed else "failed") + "\\n")
"""


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, limits=SandboxLimits(timeout_s=10.0)) as sandbox_pool:
        yield sandbox_pool


def unformatted(hostile) -> tuple[str, tuple[str, ...]]:
    """The case's program and tests (templates without placeholders: braces undoubled)."""
    return hostile.program.format(), tuple(test.format() for test in hostile.tests)


def one_interpreter_verdict(program: str, tests: tuple[str, ...]) -> str:
    done = subprocess.run([sys.executable, "-c", ONE_INTERPRETER], cwd=REPO, text=True,
                          input=json.dumps([program, list(tests)]), capture_output=True,
                          timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": REPO})
    verdicts = [line for line in done.stdout.splitlines() if line.startswith("VERDICT ")]
    return verdicts[-1].split()[1] if verdicts else f"crashed: {done.stderr[-500:]}"


@pytest.mark.parametrize("hostile", [c for c in JUDGE_CASES if c.name in FOOLED_ONE_INTERPRETER],
                         ids=lambda case: case.name)
def test_each_judge_case_fools_one_interpreter(hostile):
    program, tests = unformatted(hostile)
    assert one_interpreter_verdict(program, tests) == "passed"


def test_the_judge_fails_every_judge_case_with_a_reason(pool):
    results = pool.map([SandboxJob(*unformatted(c)) for c in JUDGE_CASES])
    for hostile, result in zip(JUDGE_CASES, results, strict=True):
        assert result.status.value in hostile.statuses, (hostile.name, result)
        assert result.reason, hostile.name
    reasons = {c.name: r.reason for c, r in zip(JUDGE_CASES, results, strict=True)}
    assert "not plain data" in reasons["always_equal_eq"]
    assert "not plain data" in reasons["sequence_dunders_on_a_list_subclass"]


PLAIN_VALUES = [
    None, True, False, 0, -7, 10 ** 40, 1.5, -0.0, float("inf"), "text \u00e9\U0001f600",
    b"\x00\xff", bytearray(b"ab"), 2 - 3j, (1, (2, [3])), [1, "a", None], {"k": [1, 2]},
    {(1, 2): {3}}, {1, 2, 3}, frozenset({(1, 2)}), range(1, 10, 3), decimal.Decimal("1.10"),
    fractions.Fraction(3, 7), collections.Counter("abca"), collections.OrderedDict(a=1, b=2),
    collections.deque([1, 2]), int, str, type(None),
]


@pytest.mark.parametrize("value", PLAIN_VALUES, ids=repr)
def test_plain_data_round_trips_with_its_type(value):
    decoded = plain_data.decode(plain_data.encode(value))
    assert type(decoded) is type(value)
    assert decoded == value


def test_iterators_and_views_arrive_drained_as_their_kind():
    assert list(plain_data.decode(plain_data.encode(map(abs, [-1, 2])))) == [1, 2]
    assert iter([]).__class__ is type(plain_data.decode(plain_data.encode(x for x in [])))
    assert list(plain_data.decode(plain_data.encode({1: "a"}.items()))) == [(1, "a")]
    assert plain_data.decode(plain_data.encode(map(abs, [-1]))) != [1]  # not a list


@pytest.mark.parametrize("payload", [
    '{"s": [{"l": []}]}', '{"zz": 1}', '{"h": 1, "n": "x"}', "[1", '{"c": [true, 1]}',
    '{"d": [[1]]}', '{"b": 12}', '{"cls": "os"}', '{"r": [1, 2]}', "[" * 100000,
])
def test_malformed_bytes_from_the_sample_are_refused(payload):
    with pytest.raises(plain_data.PlainDataError):
        plain_data.decode(payload)


def test_values_of_the_samples_own_types_do_not_encode_without_a_handle_table():
    class Mine:
        pass
    with pytest.raises(plain_data.PlainDataError):
        plain_data.encode(Mine())
    nested: list = []
    for _ in range(plain_data.MAX_DEPTH + 5):
        nested = [nested]
    with pytest.raises(plain_data.PlainDataError):
        plain_data.encode(nested)


def test_calls_cross_with_data_handles_exceptions_and_modules(pool):
    program = (
        "import math, collections\n"
        "class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"
        "    def total(self):\n        return self.a + self.b\n"
        "def longest(pairs):\n    return max(p.total() for p in pairs)\n"
        "def fail(kind):\n    raise {'value': ValueError, 'key': KeyError}[kind]('bad')\n"
        "class MyError(ValueError):\n    pass\n"
        "def mine():\n    raise MyError('subclass')\n"
        "def squares(n):\n    return (i * i for i in range(n))\n"
        "def counts(text):\n    return collections.Counter(text)\n"
        "def keep(kind, values):\n    return [v for v in values if isinstance(v, kind)]\n"
        "LIMIT = 3\n")
    tests = (
        "assert longest([Pair(1, 2), Pair(5, 6)]) == 11",
        "assert Pair(2, 3).total() == 5 and Pair(2, 3).a == 2",
        "try:\n    fail('value')\nexcept ValueError as e:\n    assert str(e) == 'bad'\n"
        "else:\n    raise AssertionError",
        "try:\n    mine()\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError",
        "assert list(squares(4)) == [0, 1, 4, 9] and squares(2) != [0, 1]",
        "assert counts('aab') == {'a': 2, 'b': 1}",
        "assert keep(int, [1, 'a', 2.0, 3]) == [1, 3]",
        "assert LIMIT == 3 and math.isclose(math.pi, 3.14159, rel_tol=1e-5)",
        "p = Pair(1, 1)\ntry:\n    p == p\nexcept BaseException as e:\n"
        "    assert 'not plain data' in str(e)\nelse:\n    raise AssertionError",
    )
    result = pool.run(program, tests)
    assert result.passed, result


def test_a_test_cannot_pass_a_function_into_the_sample(pool):
    result = pool.run("def apply(fn, x):\n    return fn(x)", ("assert apply(abs, -2) == 2",))
    assert not result.passed
    assert "cannot pass this argument" in result.reason, result


def test_the_sample_dying_inside_a_call_fails_the_sample(pool):
    result = pool.run("import os\ndef f():\n    os._exit(0)", ("f()", "assert True"))
    assert not result.passed and result.status.value == "failed", result


def test_names_from_program_lets_a_task_define_a_builtin_name(pool):
    program = "def sum(a, b):\n    return a - b"
    test = ("assert sum(10, 15) == -5",)
    shadowed, allowed = pool.map([SandboxJob(program, test),
                                  SandboxJob(program, test, names_from_program=("sum",))])
    assert not shadowed.passed and allowed.passed, (shadowed, allowed)
