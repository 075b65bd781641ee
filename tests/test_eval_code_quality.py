"""Complexity and style numbers, including for code that does not parse."""

from __future__ import annotations

import math

from glm5_jax.eval.code_quality import (
    block_complexities, cyclomatic_complexity, max_cyclomatic_complexity, style_findings)

BRANCHY = """\
def classify(x):
    if x < 0:
        return "negative"
    elif x == 0:
        return "zero"
    for _ in range(3):
        if x > 100:
            return "big"
    return "positive"


class Box:
    def size(self):
        return 1 if self else 0
"""


def test_complexity_counts_module_body_functions_and_methods():
    assert block_complexities(BRANCHY) == [1, 5, 2]
    assert cyclomatic_complexity(BRANCHY) == (1 + 5 + 2) / 3
    assert max_cyclomatic_complexity(BRANCHY) == 5.0


def test_straight_line_code_has_complexity_one():
    assert cyclomatic_complexity("x = 1\nprint(x)\n") == 1.0


def test_unparsable_code_is_infinitely_complex_and_never_raises():
    for source in ("def broken(:\n", "x = (", "a\x00b", "   indented = 1\n"):
        assert cyclomatic_complexity(source) == math.inf
        assert max_cyclomatic_complexity(source) == math.inf


def test_style_findings_count_ruff_diagnostics():
    assert style_findings("x = 1\n") == 0
    assert style_findings("import os\nx = 1 \n") == 2  # F401 unused import, W291 trailing space
    assert style_findings("x = 1\n", rules=("F",)) == 0


def test_syntax_errors_are_findings_not_exceptions():
    assert style_findings("def broken(:\n") >= 1
    assert style_findings("") == 0
