"""Every field of a typed config, declared in an experiment's ConfigDict so the command line
can set it: ``--config.model_overrides.num_hidden_layers=4``, ``--config.data.max_files=50``.

``ml_collections`` only accepts ``--config.a.b=v`` for a key that exists and knows its type.
``overridable(ModelConfig, moe_impl="blocked")`` declares each field of the dataclass as a
typed placeholder (value None: "the preset's value") and sets the given ones. ``set_fields``
reads back only the fields that were set.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import ml_collections
from ml_collections import config_dict


def _placeholder_type(hint: Any) -> type:
    """The concrete type of a field annotation (``int | None`` -> int, ``tuple[str, ...]`` -> tuple)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        origin = typing.get_origin(hint)
    return origin or hint


def overridable(config_type: type, exclude: tuple[str, ...] = (), **values: Any
                ) -> ml_collections.ConfigDict:
    """A ConfigDict with one typed placeholder per field of ``config_type`` (but ``exclude``,
    fields set elsewhere), ``values`` set."""
    hints = typing.get_type_hints(config_type)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"{config_type.__name__} has no fields {unknown}; fields: {sorted(hints)}")
    fields = ml_collections.ConfigDict()
    for field in dataclasses.fields(config_type):
        if field.name in exclude:
            continue
        fields[field.name] = config_dict.placeholder(_placeholder_type(hints[field.name]))
    for name, value in values.items():
        fields[name] = value
    return fields


def set_fields(fields: ml_collections.ConfigDict | dict | None) -> dict[str, Any]:
    """The fields that have a value (placeholders left at None are the preset's)."""
    if fields is None:
        return {}
    items = fields.to_dict() if isinstance(fields, ml_collections.ConfigDict) else dict(fields)
    return {key: value for key, value in items.items() if value is not None}
