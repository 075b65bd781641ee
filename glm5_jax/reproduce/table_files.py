"""A reproduced table and its files: ``DIR/table.json`` (everything), ``DIR/table.md`` (to read).

A table has the paper's claims with their source, its rows (each with the config, overrides,
seed, commit and workdir that produced it), a comparison of our headline numbers with the
paper's, its plots (PNG files beside it), notes on what a number means, and the provenance of
the run (command, commit, host load). A value that could not be measured is None (shown as
"n/a" with the reason in the row's ``status`` or the notes), never a made-up number.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

TABLE_JSON = "table.json"
TABLE_MD = "table.md"
RUNS = "runs.jsonl"  # one line per invocation: a resumed table was made by several


@dataclasses.dataclass
class Table:
    name: str
    title: str
    scale: str
    paper: list[dict[str, Any]]  # {"claim": text, "value": number, "source": text}
    columns: list[tuple[str, str]]  # (row key, column label)
    rows: list[dict[str, Any]]  # values by column key; "provenance": how the row was made
    comparison: list[dict[str, Any]]  # {"quantity", "paper", "ours", "note"}
    plots: list[str]  # PNG file names beside table.json
    notes: list[str]
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: str = "complete"  # complete | incomplete (a row failed or is missing) | planned (pod)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "columns": [list(c) for c in self.columns]}


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "/").replace("\n", " ")


def markdown_rows(columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(label for _, label in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return lines


def markdown(table: Table) -> str:
    lines = [f"### {table.title} (scale: {table.scale})", ""]
    for claim in table.paper:
        lines.append(f"- Paper: {claim['claim']} ({claim['source']})")
    lines.append("")
    if table.comparison:
        lines += markdown_rows([("quantity", "quantity"), ("paper", "paper"), ("ours", "ours"),
                                ("note", "note")], table.comparison)
        lines.append("")
    lines += markdown_rows(table.columns, table.rows)
    lines.append("")
    for plot in table.plots:
        lines += [f"![{table.name}: {Path(plot).stem}]({plot})", ""]
    lines += [f"- {note}" for note in table.notes]
    provenance = table.provenance
    if provenance:
        lines += ["", (f"Produced by `{provenance.get('command')}`. "
                       f"{_runs_sentence(provenance)} Every row's config, overrides, seed and commit are "
                       "in table.json.")]
    if table.status != "complete":
        lines += ["", f"Status: **{table.status}**."]
    return "\n".join(lines) + "\n"


def _load(summary: dict | None) -> str:
    if not summary:
        return "n/a"
    return (f"min {summary['min']} / median {summary['median']} / max {summary['max']} on "
            f"{summary['cpu_count']} cores")


def record_run(workdir: Path, provenance: dict[str, Any]) -> dict[str, Any]:
    """Append this invocation to DIR/runs.jsonl; the provenance with every run so far (the
    rows' training may have happened in an earlier one, under another load)."""
    path = workdir / RUNS
    earlier = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    with path.open("a") as runs:
        runs.write(json.dumps(provenance) + "\n")
    return {**provenance, "runs": [*earlier, provenance]}


def _runs_sentence(provenance: dict[str, Any]) -> str:
    """The invocations that did work (10 s or more), and how many others only re-read
    finished rows (every one is in runs.jsonl)."""
    runs = provenance.get("runs") or [provenance]
    working = [run for run in runs if (run.get("wall_s") or 0) >= 10] or runs[-1:]
    parts = [f"{run.get('started')} at commit {run.get('commit')}: {run.get('wall_s')} s wall, "
             f"{'n/a' if run.get('cpu_s') is None else run['cpu_s']} CPU s, 1-minute load "
             f"{_load(run.get('load_average_1min'))}" for run in working]
    rereads = len(runs) - len(working)
    return (f"Made by {len(working)} invocation(s): " + "; ".join(parts)
            + (f" (and {rereads} under 10 s that re-read finished rows)." if rereads else "."))


def write_table(workdir: Path, table: Table) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / TABLE_JSON).write_text(json.dumps(table.to_json(), indent=1, default=_jsonable) + "\n")
    (workdir / TABLE_MD).write_text(markdown(table))


def write_fragment(table: Table, workdir: Path, fragment: Path, repo: Path) -> None:
    """A BENCHMARKS.md fragment (``benchmarks/results/<name>.md``): the table as table.md shows
    it, under a level-2 heading, with its plots copied beside the fragment and linked from the
    repository root (where BENCHMARKS.md is). Hand-written notes belong in their own fragment."""
    fragment.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(table)
    for plot in table.plots:
        target = fragment.with_name(f"{fragment.stem}_{plot}")
        target.write_bytes((workdir / plot).read_bytes())
        link = target.relative_to(repo).as_posix() if target.is_relative_to(repo) else target.name
        text = text.replace(f"]({plot})", f"]({link})")
    heading = f"## Paper table: {table.title}"
    body = text.split("\n", 1)[1]  # table.md's own heading, replaced
    fragment.write_text(f"{heading}\n\nScale: {table.scale}. Command: `{table.provenance.get('command')}`.\n{body}")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)
