"""``glm5-eval``: results file, pass@k on the last stdout line, malformed lines reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from glm5_jax.eval.cli import main
from glm5_jax.eval.humaneval import load_humaneval
from glm5_jax.eval.mbpp import load_mbpp

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_lines(path, lines) -> str:
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def humaneval_samples(tmp_path):
    problems = load_humaneval()
    lines = []
    for task_id in ("HumanEval/0", "HumanEval/1", "HumanEval/2"):
        lines.append(json.dumps({"task_id": task_id,
                                 "completion": problems[task_id].canonical_solution}))
        lines.append(json.dumps({"task_id": task_id, "completion": "    return None\n"}))
    lines[3:3] = ["{not json", '{"task_id": "HumanEval/9999", "completion": ""}',
                  '{"task_id": "HumanEval/3"}', "[1, 2]"]
    return write_lines(tmp_path / "samples.jsonl", lines)


def test_humaneval_command(humaneval_samples, capsys):
    assert main(["humaneval", "--samples", humaneval_samples, "--k", "1,2,10",
                 "--workers", "2"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1]) == {"pass@1": 0.5, "pass@2": 1.0}
    for line_number, why in ((4, "not valid JSON"), (5, "unknown HumanEval task_id"),
                             (6, "missing 'completion'"), (7, "not a JSON object")):
        assert f"line {line_number}: {why}" in err
    with open(humaneval_samples + "_results.jsonl") as handle:
        rows = [json.loads(line) for line in handle]
    assert [(r["task_id"], r["passed"]) for r in rows] == [
        ("HumanEval/0", True), ("HumanEval/0", False), ("HumanEval/1", True),
        ("HumanEval/1", False), ("HumanEval/2", True), ("HumanEval/2", False)]
    assert rows[0]["result"] == "passed"
    assert rows[1]["result"].startswith("failed: ") and "completion" in rows[1]


def test_mbpp_command_with_split(tmp_path, capsys):
    problems = load_mbpp()
    samples = write_lines(tmp_path / "mbpp.jsonl", [
        json.dumps({"task_id": 11, "completion": problems[11].code}),
        json.dumps({"task_id": "12", "completion": "def nothing():\n    pass"}),
        json.dumps({"task_id": 5, "completion": problems[5].code}),
    ])
    assert main(["mbpp", "--samples", samples, "--split", "test", "--k", "1"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1]) == {"pass@1": 0.5}
    assert "line 3: task_id 5 is not in the test split" in err
    with open(samples + "_results.jsonl") as handle:
        rows = [json.loads(line) for line in handle]
    assert [r["passed"] for r in rows] == [True, False]
    assert rows[1]["tests_total"] == 3 and rows[1]["tests_passed"] == 0


def test_bad_arguments_and_empty_files(tmp_path, capsys):
    samples = write_lines(tmp_path / "bad.jsonl", ["nonsense"])
    assert main(["humaneval", "--samples", samples, "--k", "0"]) == 2
    assert main(["humaneval", "--samples", samples]) == 1
    _, err = capsys.readouterr()
    assert "line 1: not valid JSON" in err


def test_module_entry_point_prints_json_on_the_last_line(tmp_path):
    problems = load_mbpp()
    samples = write_lines(tmp_path / "one.jsonl",
                          [json.dumps({"task_id": 11, "completion": problems[11].code})])
    completed = subprocess.run(
        [sys.executable, "-m", "glm5_jax.eval.cli", "mbpp", "--samples", samples, "--k", "1"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, check=True)
    assert json.loads(completed.stdout.splitlines()[-1]) == {"pass@1": 1.0}
