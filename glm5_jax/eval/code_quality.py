"""Code-quality signals for the hierarchical reward: complexity (radon), style (ruff).

Each is a plain number and never raises on bad input: a program that does not parse
gets ``math.inf`` complexity (worse than any real program, and impossible to mistake
for a good score), and its syntax errors count as ruff findings like any other.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Iterator, Sequence

from radon.visitors import Class, ComplexityVisitor, Function

DEFAULT_STYLE_RULES = ("E", "F", "W")  # pycodestyle errors and warnings, pyflakes
DEFAULT_LINE_LENGTH = 100


def block_complexities(source: str) -> list[int] | None:
    """Cyclomatic complexity of the module body and of every function, method and closure;
    None if the source does not parse."""
    try:
        visitor = ComplexityVisitor.from_code(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError, TypeError):
        return None
    blocks = [visitor.complexity]
    for block in visitor.functions + visitor.classes:
        blocks.extend(function.complexity for function in _functions_in(block))
    return blocks


def cyclomatic_complexity(source: str) -> float:
    """Mean complexity over the module body and each function (1.0 is straight-line code)."""
    blocks = block_complexities(source)
    return math.inf if blocks is None else sum(blocks) / len(blocks)


def max_cyclomatic_complexity(source: str) -> float:
    """The most complex single block: the usual threshold metric (radon grades A-F)."""
    blocks = block_complexities(source)
    return math.inf if blocks is None else float(max(blocks))


def style_findings(source: str, rules: Sequence[str] = DEFAULT_STYLE_RULES,
                   line_length: int = DEFAULT_LINE_LENGTH) -> int:
    """Number of ruff findings (syntax errors included), ignoring any project config."""
    command = [_ruff_binary(), "check", "--isolated", "--no-cache", "--output-format", "json",
               "--line-length", str(line_length), "--select", ",".join(rules),
               "--stdin-filename", "program.py", "-"]
    completed = subprocess.run(command, input=source.encode("utf-8", "surrogatepass"),
                               capture_output=True, timeout=60, check=False)
    if completed.returncode not in (0, 1):  # 1 means "found something"; 2 means ruff failed
        raise RuntimeError(f"ruff failed: {completed.stderr.decode(errors='replace').strip()}")
    return len(json.loads(completed.stdout or b"[]"))


def _functions_in(block: Function | Class) -> Iterator[Function]:
    if isinstance(block, Class):
        for method in block.methods:
            yield from _functions_in(method)
        for inner in block.inner_classes:
            yield from _functions_in(inner)
        return
    yield block
    for closure in block.closures:
        yield from _functions_in(closure)


def _ruff_binary() -> str:
    try:
        from ruff.__main__ import find_ruff_bin

        return str(find_ruff_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("ruff")
        if found is None:
            raise RuntimeError("ruff is not installed") from None
        return found
