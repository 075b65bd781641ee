"""Hostile programs that try to fake a pass by subverting the *judgment*, not the host.

Each one in ``FOOLED_ONE_INTERPRETER`` passes when program and tests share one
interpreter, as they did before the judge (tests/test_sandbox_judge.py replays that
runner's loop to show it). With the tests in the judge's interpreter, every one must
come back "failed". The tests are in HumanEval's and MBPP's shape. Like those of
cases.py, programs and tests are ``str.format`` templates (braces doubled).
"""

from __future__ import annotations

from hostile_cases.cases import case

# A wrong candidate, appended to the programs that patch the harness instead.
WRONG = "def f(x=0):\n    return 1\n"

JUDGE_CASES = [
    case("always_equal_eq",
         "class Always:\n    def __eq__(self, other):\n        return True\n"
         "    def __ne__(self, other):\n        return False\n"
         "def f(x):\n    return Always()",
         ("assert f(1) == 2", "assert f(2) == [3, 4]")),
    case("always_equal_hash_for_sets_and_dicts",
         "class Always:\n    def __eq__(self, other):\n        return True\n"
         "    def __hash__(self):\n        return hash(2)\n"
         "def f(x):\n    return Always()",
         ("assert f(1) in {{2}}", "assert {{f(1): 'a'}} == {{2: 'a'}}")),
    case("flipping_bool",
         "class Flip:\n    calls = 0\n    def __bool__(self):\n        Flip.calls += 1\n"
         "        return Flip.calls % 2 == 1\n"
         "def is_even(x):\n    return Flip()",
         ("assert is_even(2)", "assert not is_even(3)")),
    case("numeric_dunders_on_a_float_subclass",
         "class Close(float):\n    def __sub__(self, other):\n        return 0.0\n"
         "    def __rsub__(self, other):\n        return 0.0\n"
         "    def __abs__(self):\n        return 0.0\n"
         "    def __eq__(self, other):\n        return True\n"
         "    __hash__ = float.__hash__\n"
         "def area(r):\n    return Close(0.0)",
         ("assert abs(area(2) - 12.566) < 1e-3", "assert area(1) == 3.14159")),
    case("sequence_dunders_on_a_list_subclass",
         "class Fake(list):\n    def __len__(self):\n        return 3\n"
         "    def __getitem__(self, i):\n        return [1, 2, 3][i]\n"
         "    def __eq__(self, other):\n        return True\n"
         "    def __iter__(self):\n        return iter([1, 2, 3])\n"
         "def f(x):\n    return Fake()",
         ("assert len(f(0)) == 3 and f(0)[0] == 1", "assert f(0) == [1, 2, 3]",
          "assert sorted(f(0)) == [1, 2, 3]")),
    case("str_and_int_subclasses_equal_to_anything",
         "class S(str):\n    def __eq__(self, other):\n        return True\n"
         "    __hash__ = str.__hash__\n"
         "class I(int):\n    def __eq__(self, other):\n        return True\n"
         "    __hash__ = int.__hash__\n"
         "def name(x):\n    return S('wrong')\ndef count(x):\n    return I(0)",
         ("assert name(1) == 'right'", "assert count(1) == 7")),
    case("always_equal_inside_a_container",
         "class Always:\n    def __eq__(self, other):\n        return True\n"
         "def f(x):\n    return [Always(), Always()]",
         ("assert f(1) == [2, 3]",)),
    case("lying_class_attribute",
         "class Liar:\n    __class__ = property(lambda self: int)\n"
         "    def __eq__(self, other):\n        return True\n"
         "def f(x):\n    return Liar()",
         ("assert isinstance(f(1), int) and f(1) == 5",)),
    case("rebind_the_runners_step_decoder",
         "import sys\n"
         "protocol = sys.modules['glm5_jax.eval.sandbox_child.protocol']\n"
         "def only_pass(payload):\n"
         "    index, token, source = payload.split(b'\\n', 2)\n"
         "    return int(index), token.decode(), 'pass'\n"
         "protocol.decode_step.__code__ = only_pass.__code__\n" + WRONG,
         ("assert f() == 2", "assert 1 == 2")),
    case("patch_every_harness_function_through_gc",
         "import gc, types\n"
         "def only_pass(*args, **kwargs):\n    return None\n"
         "for obj in gc.get_objects():\n"
         "    if isinstance(obj, types.FunctionType) and obj is not only_pass \\\n"
         "            and (obj.__module__ or '').startswith('glm5_jax'):\n"
         "        try:\n            obj.__code__ = only_pass.__code__\n"
         "        except (ValueError, TypeError):\n            pass\n" + WRONG,
         ("assert f() == 2",), statuses=("failed", "timeout")),
    case("settrace_skips_assert_lines",
         "import sys, threading\n"
         "def tracer(frame, event, arg):\n"
         "    if frame.f_code.co_filename not in ('<step 0>',) \\\n"
         "            and frame.f_code.co_filename.startswith('<step'):\n"
         "        if event == 'line' and frame.f_lineno == 1:\n"
         "            frame.f_lineno = 2\n"
         "        return tracer\n"
         "    return tracer\n"
         "sys.settrace(tracer)\nthreading.settrace(tracer)\n" + WRONG,
         ("assert f() == 2\npass",)),
    case("setprofile_rebinds_the_candidate_when_a_test_starts",
         "import sys\n"
         "def profile(frame, event, arg):\n"
         "    if event == 'call' and frame.f_code.co_filename.startswith('<step') \\\n"
         "            and frame.f_code.co_filename != '<step 0>':\n"
         "        frame.f_globals['f'] = lambda *a: 2\n"
         "sys.setprofile(profile)\n" + WRONG,
         ("assert f() == 2",)),
    case("frame_walk_reads_the_expected_value",
         "import sys\n"
         "def f(x):\n"
         "    frame = sys._getframe(1)\n"
         "    numbers = [c for c in frame.f_code.co_consts if type(c) is int and c != x]\n"
         "    return numbers[-1] if numbers else None",
         ("assert f(3) == 12345",)),
    case("shadow_the_builtin_the_test_measures_with",
         "def len(value):\n    return 3\ndef abs(value):\n    return 0\n"
         "def f(x):\n    return []",
         ("assert len(f(0)) == 3", "assert abs(len(f(1)) - 3) == 0")),
    case("spoof_a_stdlib_module_the_test_relies_on",
         "import types\n"
         "math = types.SimpleNamespace(isclose=lambda *a, **k: True)\n"
         "def area(r):\n    return 0.0",
         ("assert math.isclose(area(2), 12.566, rel_tol=1e-3)",)),
]

# The cases shown to pass when program and tests share one interpreter (the old runner);
# the others (patching everything through gc) broke that runner instead of fooling it.
FOOLED_ONE_INTERPRETER = frozenset(
    c.name for c in JUDGE_CASES if c.name != "patch_every_harness_function_through_gc")
