"""Sweep points: the cartesian product of ``--axis`` values, or a sweep file's list.

A point is an ordered dict of config overrides (dotted keys, as on the command line:
``model_overrides.router_mode``). Its name, which is also its workdir, is made from those
overrides so that rerunning the same sweep finds the same directories.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
from pathlib import Path
from typing import Any

from glm5_jax.errors import UserError

Point = dict[str, Any]


def parse_axis(axis: str) -> tuple[str, list[str]]:
    """``"learning_rate=1e-3,3e-3"`` -> ("learning_rate", ["1e-3", "3e-3"])."""
    key, equals, values = axis.partition("=")
    if not equals or not key or not values:
        raise UserError(f"--axis={axis!r} must look like key=value1,value2 (e.g. "
                        "--axis=learning_rate=1e-3,3e-3)")
    return key.strip(), [v.strip() for v in values.split(",") if v.strip()]


def grid(axes: list[str]) -> list[Point]:
    """Every combination of the axes' values, the first axis varying slowest."""
    parsed = [parse_axis(a) for a in axes]
    keys = [k for k, _ in parsed]
    if len(set(keys)) != len(keys):
        raise UserError(f"--axis keys repeat: {keys}")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in parsed))]


def sweep_file_points(path: str | Path) -> list[Point] | None:
    """``get_sweep()`` of a sweep file (a list of override dicts), or None without one."""
    spec = importlib.util.spec_from_file_location(f"sweep_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        return None
    points = module.get_sweep()
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise UserError(f"{path}: get_sweep() must return a list of override dicts")
    return [dict(p) for p in points]


def format_value(value: Any) -> str:
    """A Python value as ``--config.key=`` text that ml_collections parses back."""
    if isinstance(value, str):
        return value
    return repr(value)


def point_name(point: Point) -> str:
    """A directory name from the overrides: ``learning_rate=0.001,router_mode=dynamic``."""
    if not point:
        return "base"
    parts = [f"{key.split('.')[-1]}={format_value(value)}" for key, value in point.items()]
    name = re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(parts))
    return name[:200]


def override_flags(point: Point) -> list[str]:
    return [f"--config.{key}={format_value(value)}" for key, value in point.items()]
