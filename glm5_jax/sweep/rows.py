"""What every sweep point's row starts with, whatever its job (train or rl)."""

from __future__ import annotations

from typing import Any


def row_head(name: str, job: str, overrides: dict, status: dict,
             records: list[dict]) -> dict[str, Any]:
    """What every point's row starts with: name, job, overrides, status, steps, error."""
    row: dict[str, Any] = {"name": name, "job": job, "overrides": overrides,
                           "status": status.get("status", "pending"),
                           "steps": records[-1]["step"] if records else 0}
    if status.get("error"):
        row["error"] = status["error"]
    return row
