"""Reading a paper table's experiment file: its training config and its table spec at a scale.

``experiments/paper/<table>.py`` defines ``get_config(scale)`` (what ``python -m glm5_jax.train
--config=experiments/paper/<table>.py:<scale>`` trains) and ``get_table(scale)`` (rows, seeds,
evaluation settings). Row overrides are nested dicts, as the config nests its fields
(``{"model_overrides": {"moe_as_dense": True}}``); the sweep runner gets them flattened to
``--config.model_overrides.moe_as_dense=True``.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections

from glm5_jax.errors import UserError
from glm5_jax.reproduce.scales import REPO


def load_module(path: str | Path) -> ModuleType:
    path = Path(path)
    if not path.is_absolute():
        path = REPO / path
    if not path.is_file():
        raise UserError(f"experiment file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"paper_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flatten(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": 2}`` -> ``{"a.b": 1, "c": 2}``."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            flat.update(flatten(dict(value.items()), f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def merge(*overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Nested overrides merged left to right (later ones win, key by key)."""
    merged: dict[str, Any] = {}
    for layer in overrides:
        for key, value in layer.items():
            if isinstance(value, (Mapping, ml_collections.ConfigDict)) and isinstance(merged.get(key), dict):
                merged[key] = merge(merged[key], dict(value.items()))
            elif isinstance(value, (Mapping, ml_collections.ConfigDict)):
                merged[key] = merge(dict(value.items()))
            else:
                merged[key] = value
    return merged


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
                    where: str) -> ml_collections.ConfigDict:
    """``config`` with the nested ``overrides`` set; an unknown key is an error naming it."""
    for dotted, value in flatten(overrides).items():
        node, keys = config, dotted.split(".")
        for depth, key in enumerate(keys):
            if not hasattr(node, "keys") or key not in node:
                valid = sorted(node.keys()) if hasattr(node, "keys") else []
                raise UserError(f"{where}: unknown field {dotted!r} ({'.'.join(keys[:depth]) or 'the top level'} "
                                f"has no {key!r}; valid keys there: {valid})")
            if depth < len(keys) - 1:
                node = node[key]
        node[keys[-1]] = value
    return config


def training_config(path: str, scale: str, overrides: Mapping[str, Any] | None = None
                    ) -> ml_collections.ConfigDict:
    """``get_config(scale)`` of the file with a row's overrides applied."""
    config = load_module(path).get_config(scale)
    return apply_overrides(config, overrides or {}, f"{path}:{scale}")


def table_spec(path: str, scale: str, assignments: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """``get_table(scale)`` of the file, with ``--table.KEY=VALUE`` assignments applied.

    A value is read as a Python literal when it parses as one (``0,1`` is the tuple (0, 1)),
    else as text; it must suit the field's current type (ml_collections checks)."""
    spec = load_module(path).get_table(scale)
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        if not equals or not key:
            raise UserError(f"--table.{assignment}: write --table.KEY=VALUE")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        try:
            apply_overrides(spec, {key: value} if "." not in key else _nest(key, value), f"{path} table")
        except (TypeError, ValueError) as error:
            if isinstance(error, UserError):
                raise
            raise UserError(f"--table.{key}={text}: {error}") from None
    return spec


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    keys = dotted.split(".")
    nested: Any = value
    for key in reversed(keys):
        nested = {key: nested}
    return nested
