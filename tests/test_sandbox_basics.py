"""The sandbox's verdicts on ordinary programs: statuses, reasons, counts, output."""

from __future__ import annotations

import os
import time

import pytest

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.pool import SandboxPool
from glm5_jax.eval.results import ExecutionResult, Status
from glm5_jax.eval.sandbox import run_program

LIMITS = SandboxLimits(timeout_s=2.0, output_tail_bytes=64)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, limits=LIMITS) as sandbox_pool:
        yield sandbox_pool


def test_program_and_all_tests_passing_is_a_pass(pool):
    result = pool.run("def add(a, b):\n    return a + b",
                      ("assert add(1, 2) == 3", "assert add(-1, 1) == 0"))
    assert result.status is Status.PASSED and result.passed
    assert (result.tests_passed, result.tests_total) == (2, 2)
    assert result.test_errors == (None, None)
    assert result.fraction_passed == 1.0
    assert result.reason == ""
    assert 0 < result.runtime_s < LIMITS.timeout_s


def test_failing_tests_are_counted_and_explained(pool):
    result = pool.run("def add(a, b):\n    return a - b",
                      ("assert add(1, 0) == 1", "assert add(1, 2) == 3, 'wrong sum'",
                       "x = 1\nassert add(2, 2) == 4"))
    assert result.status is Status.FAILED
    assert (result.tests_passed, result.tests_total) == (1, 3)
    assert result.fraction_passed == pytest.approx(1 / 3)
    assert result.test_errors == (None, "AssertionError: wrong sum (line 1)",
                                  "AssertionError (line 2)")
    assert result.reason == "test 2 of 3 failed: AssertionError: wrong sum (line 1)"


def test_program_that_raises_runs_no_tests(pool):
    result = pool.run("x = 1\ny = x / 0", ("assert True",))
    assert result.status is Status.FAILED
    assert result.reason == "program raised ZeroDivisionError: division by zero (line 2)"
    assert result.tests_passed == 0 and result.test_errors == ("not run",)


def test_syntax_error_is_a_failure_not_an_error(pool):
    result = pool.run("def broken(:\n    pass", ("assert True",))
    assert result.status is Status.FAILED
    assert result.reason.startswith("program raised SyntaxError")


def test_program_without_tests_passes_when_it_runs_cleanly(pool):
    assert pool.run("import math\nassert math.sqrt(4) == 2").passed
    failed = pool.run("raise ValueError('nope')")
    assert failed.status is Status.FAILED and "ValueError: nope" in failed.reason
    assert failed.fraction_passed == 0.0


def test_timeout_keeps_the_tests_that_finished(pool):
    started = time.monotonic()
    result = pool.run("def f():\n    return 1",
                      ("assert f() == 1", "while True:\n    pass", "assert f() == 1"))
    assert result.status is Status.TIMEOUT
    assert (result.tests_passed, result.tests_total) == (1, 3)
    assert result.test_errors == (None, "not run", "not run")
    assert "timeout" in result.reason
    assert time.monotonic() - started >= LIMITS.timeout_s  # not cut short


def test_output_is_captured_counted_and_capped(pool):
    result = pool.run("import sys\nprint('a' * 1000 + 'END')\nsys.stderr.write('oops\\n')")
    assert result.passed
    assert result.stdout_bytes == 1004 and result.stdout_tail.endswith("aEND\n")
    assert len(result.stdout_tail) == LIMITS.output_tail_bytes
    assert result.stderr_tail == "oops\n" and result.stderr_bytes == 5


def test_scratch_space_is_size_limited_per_sample(pool):
    write = "open('/tmp/blob', 'wb').write(b'x' * (3 << 20))"
    assert pool.run(write).passed
    small = pool.run(write, limits=SandboxLimits(timeout_s=2.0, scratch_bytes=1 << 20))
    assert small.status is Status.FAILED and "No space left on device" in small.reason


def test_stdin_is_empty(pool):
    result = pool.run("import sys\nassert sys.stdin.read() == ''\ninput()")
    assert result.status is Status.FAILED and "EOFError" in result.reason


def test_environment_is_scrubbed_and_cwd_is_a_private_empty_directory(pool):
    # The tests run in the judge; the program reads its own file back for them.
    result = pool.run("import os\nkeys = sorted(os.environ)\nentries = os.listdir('.')\n"
                      "open('scratch.txt', 'w').write('ok')\n"
                      "def scratch():\n    return open('scratch.txt').read()",
                      ("assert keys == ['HOME', 'LANG', 'PATH', 'TMPDIR'], keys",
                       "assert entries == [], entries",
                       "assert scratch() == 'ok'"))
    assert result.passed, result


def test_stdlib_modules_import_after_the_privilege_drop(pool):
    result = pool.run("import encodings.idna, xml.etree.ElementTree, sqlite3, unittest, asyncio\n"
                      "import importlib.metadata, email.mime.text, json.tool, ctypes\n"
                      "assert 'x'.encode('idna') == b'x'")
    assert result.passed, result


def test_namespace_is_shared_between_program_and_tests_but_not_samples(pool):
    first = pool.run("state = [1]", ("state.append(2)", "assert state == [1, 2]"))
    second = pool.run("pass", ("assert 'state' not in globals()",))
    assert first.passed and second.passed


def test_main_guard_does_not_run(pool):
    result = pool.run("if __name__ == '__main__':\n    raise SystemExit('ran main')")
    assert result.passed


def test_hash_seed_is_fixed_so_verdicts_are_reproducible(pool):
    results = [pool.run("print(list({'apple', 'kiwi', 'fig', 'plum'}))") for _ in range(3)]
    assert len({r.stdout_tail for r in results}) == 1


def test_run_program_one_call_with_timeout_override():
    # The default 10 s would let the 5 s sleep finish: a timeout is the override's 0.5 s.
    result = run_program("import time\ntime.sleep(5)", timeout_s=0.5)
    assert result.status is Status.TIMEOUT


def test_result_round_trips_through_a_dict():
    result = ExecutionResult(status=Status.FAILED, reason="r", runtime_s=0.5, tests_passed=1,
                             tests_total=2, test_errors=(None, "AssertionError"),
                             isolation=("net-ns",))
    assert ExecutionResult.from_dict(result.to_dict()) == result


def test_limits_reject_nonsense_and_default_cpu_to_just_above_the_wall_clock():
    with pytest.raises(ValueError):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError):
        SandboxLimits(memory_bytes=-1)
    assert SandboxLimits(timeout_s=2.5).effective_cpu_s == 4
    assert SandboxLimits(cpu_s=7).effective_cpu_s == 7


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can drop to a sandbox uid")
def test_as_root_each_worker_has_its_own_unprivileged_uid(pool):
    results = pool.map(["import time, os\ntime.sleep(0.3)\nprint(os.getuid())"] * 2)
    uids = {int(r.stdout_tail) for r in results}
    assert len(uids) == 2 and 0 not in uids


def test_workdir_cleanup_never_changes_permissions_outside_the_tree(tmp_path):
    from glm5_jax.eval.sandbox_child.supervisor import _remove_tree, permission_fixer

    parent, outside = tmp_path / "parent", tmp_path / "outside"
    parent.mkdir(mode=0o755)
    outside.mkdir(mode=0o755)
    tree = parent / "work"
    (tree / "sub").mkdir(parents=True)
    (tree / "link").symlink_to(outside)
    _remove_tree(str(tree))
    _remove_tree(str(tree))  # already gone: a no-op, not a chmod of the parent
    assert not tree.exists() and outside.exists()
    assert (parent.stat().st_mode & 0o7777, outside.stat().st_mode & 0o7777) == (0o755, 0o755)

    fixer = permission_fixer(str(tree))
    denied = (PermissionError, PermissionError(13, "denied"), None)
    for path in (str(tree), str(parent / "elsewhere"), str(outside)):
        with pytest.raises(PermissionError):
            fixer(os.unlink, path, denied)
    assert (parent.stat().st_mode & 0o7777, outside.stat().st_mode & 0o7777) == (0o755, 0o755)
