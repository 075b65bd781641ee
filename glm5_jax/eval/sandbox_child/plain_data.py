"""Plain data across the judge boundary: what a candidate's call may return to the judge.

The judge runs the tests in its own interpreter; a call to the sample's function crosses
a process boundary, and only *data* comes back: numbers, strings, bytes, None, bools and
containers of them (tuples, lists, dicts, sets, frozensets), plus a few stdlib value
types whose equality is data too (complex, range, Decimal, Fraction, the ``collections``
dicts and deque) and the builtin classes themselves (``int``, ``str``...). Iterators the candidate returns (generators, ``map``...) are drained in
the sample and arrive as an iterator over their items. Anything else stays in the sample
and crosses as a *handle* (an id) the judge may pass back or call, never compare.

Encoding is JSON with every container tagged as a one-key object, e.g. ``{"t": [1, 2]}``
for ``(1, 2)``; bare JSON objects never occur otherwise, so decoding is unambiguous.
Decoding builds only the types above, with judge-side constructors, and rejects anything
malformed with ``PlainDataError``: the decoder is the only code that touches bytes of
the sample's making, and it never calls into them.
"""

from __future__ import annotations

import collections
import decimal
import fractions
import json
from collections.abc import Callable

MAX_DEPTH = 200  # nesting deeper than this is refused on both sides, never recursed into


class PlainDataError(ValueError):
    """A value that cannot cross the judge boundary, or bytes that do not decode."""


_SCALARS = (type(None), bool, int, float, str)
_SEQUENCE_TAGS = {list: "l", tuple: "t", set: "s", frozenset: "f",
                  collections.deque: "q"}
_DICT_TAGS = {dict: "d", collections.OrderedDict: "od", collections.Counter: "ct",
              collections.defaultdict: "dd"}
_ITERATOR_TYPES = frozenset(type(x) for x in (
    (i for i in ()), map(abs, ()), filter(None, ()), zip(), enumerate(()), reversed(()),
    iter(()), iter([]), iter(""), iter(range(0)), iter(set()), iter({}), iter({}.values()),
    iter({}.items()), reversed([]), reversed({}), iter(b""), iter(bytearray())))
# Builtin classes are data too (MBPP 533 passes ``int`` to filter by type); each side
# sends a name and the other maps it to its own class.
_BUILTIN_CLASSES = {kind.__name__: kind for kind in (
    int, float, complex, str, bytes, bytearray, bool, list, tuple, dict, set, frozenset,
    type(None), object, range, type)}
_VIEW_TYPES = {type({}.keys()): "dk", type({}.values()): "dv", type({}.items()): "di"}


def encode(value: object, handle_for: Callable[[object], int] | None = None) -> str:
    """JSON text for ``value``. ``handle_for`` registers a non-plain object and returns its
    id (the sample's side); without it a non-plain object raises ``PlainDataError``."""
    return json.dumps(_to_tree(value, handle_for, 0), allow_nan=True, separators=(",", ":"))


def _to_tree(value: object, handle_for, depth: int) -> object:
    if depth > MAX_DEPTH:
        raise PlainDataError(f"data nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if kind in _SCALARS:
        if kind is int and value.bit_length() > 60_000:
            raise PlainDataError("an int of more than 60,000 bits")
        return value
    if kind in _SEQUENCE_TAGS:
        return {_SEQUENCE_TAGS[kind]: [_to_tree(v, handle_for, depth + 1) for v in value]}
    if kind in _DICT_TAGS:
        return {_DICT_TAGS[kind]: [[_to_tree(k, handle_for, depth + 1),
                                    _to_tree(v, handle_for, depth + 1)]
                                   for k, v in value.items()]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is bytearray:
        return {"ba": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    if kind is range:
        return {"r": [value.start, value.stop, value.step]}
    if kind is decimal.Decimal:
        return {"dec": str(value)}
    if kind is fractions.Fraction:
        return {"fr": [value.numerator, value.denominator]}
    if kind is type and value in _BUILTIN_CLASSES.values():
        return {"cls": value.__name__}
    if kind in _VIEW_TYPES:
        items = list(value)
        return {_VIEW_TYPES[kind]: [_to_tree(v, handle_for, depth + 1) for v in items]}
    if kind in _ITERATOR_TYPES:
        return {"i": [_to_tree(v, handle_for, depth + 1) for v in value]}
    if handle_for is None:
        raise PlainDataError(f"a {_type_name(value)} object is not plain data")
    return {"h": handle_for(value), "n": _type_name(value)}


def _type_name(value: object) -> str:
    try:
        name = type(value).__name__
    except BaseException:  # noqa: BLE001 - a metaclass may misbehave; this is the sample's side
        name = "object"
    return name if isinstance(name, str) else "object"


def decode(text: str | bytes, handle: Callable[[int, str], object] | None = None) -> object:
    """The value ``text`` encodes, built from judge-side types only.

    ``handle(id, type_name)`` makes the local stand-in for a remote object; without it a
    handle is malformed. Every other irregularity raises ``PlainDataError``.
    """
    try:
        tree = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PlainDataError(f"undecodable data: {type(exc).__name__}") from None
    try:
        return _from_tree(tree, handle, 0)
    except PlainDataError:
        raise
    except (TypeError, ValueError, OverflowError, decimal.InvalidOperation,
            ZeroDivisionError) as exc:  # e.g. an unhashable set element
        raise PlainDataError(f"malformed data: {type(exc).__name__}: {exc}") from None


def _from_tree(tree: object, handle, depth: int) -> object:
    if depth > MAX_DEPTH:
        raise PlainDataError(f"data nested deeper than {MAX_DEPTH} levels")
    kind = type(tree)
    if kind in (type(None), bool, int, float, str):
        return tree
    if kind is not dict or len(tree) not in (1, 2):
        raise PlainDataError(f"malformed data: unexpected {kind.__name__}")
    if len(tree) == 2:
        if handle is None or set(tree) != {"h", "n"} or type(tree["h"]) is not int \
                or type(tree["n"]) is not str:
            raise PlainDataError("malformed data: unexpected handle")
        return handle(tree["h"], tree["n"][:100])
    ((tag, body),) = tree.items()
    items = lambda: [_from_tree(v, handle, depth + 1) for v in _list(body)]  # noqa: E731
    pairs = lambda: [(_from_tree(k, handle, depth + 1), _from_tree(v, handle, depth + 1))  # noqa: E731
                     for k, v in (_pair(p) for p in _list(body))]
    if tag in _SEQUENCE_BUILDERS:
        return _SEQUENCE_BUILDERS[tag](items())
    if tag in _DICT_BUILDERS:
        return _DICT_BUILDERS[tag](pairs())
    if tag in ("b", "ba"):
        if type(body) is not str:
            raise PlainDataError("malformed bytes")
        data = bytes.fromhex(body)
        return data if tag == "b" else bytearray(data)
    if tag == "c":
        real, imag = _numbers(body, 2, float)
        return complex(real, imag)
    if tag == "r":
        return range(*_numbers(body, 3, int))
    if tag == "dec":
        if type(body) is not str or len(body) > 10_000:
            raise PlainDataError("malformed Decimal")
        return decimal.Decimal(body)
    if tag == "fr":
        numerator, denominator = _numbers(body, 2, int)
        return fractions.Fraction(numerator, denominator)
    if tag == "dk":
        return dict.fromkeys(items()).keys()
    if tag == "dv":
        return dict(enumerate(items())).values()
    if tag == "di":
        return dict(_pair(p) for p in items()).items()
    if tag == "i":
        return iter(items())
    if tag == "cls":
        if type(body) is not str or body not in _BUILTIN_CLASSES:
            raise PlainDataError("malformed data: unknown class")
        return _BUILTIN_CLASSES[body]
    raise PlainDataError(f"malformed data: unknown tag {str(tag)[:20]!r}")


def _list(body: object) -> list:
    if type(body) is not list:
        raise PlainDataError("malformed data: expected a list")
    return body


def _pair(body: object) -> tuple:
    if type(body) not in (list, tuple) or len(body) != 2:
        raise PlainDataError("malformed data: expected a key-value pair")
    return body[0], body[1]


def _numbers(body: object, count: int, kind: type) -> list:
    values = _list(body)
    accepted = (int, float) if kind is float else (int,)
    if len(values) != count or any(type(v) not in accepted or type(v) is bool for v in values):
        raise PlainDataError("malformed data: expected numbers")
    return values


def _defaultdict(pairs: list) -> collections.defaultdict:
    # The factory is code and stays in the sample; equality and lookups of present keys
    # behave as the candidate's, a missing key raises KeyError instead of calling it.
    return collections.defaultdict(None, pairs)


_SEQUENCE_BUILDERS: dict[str, Callable[[list], object]] = {
    "l": list, "t": tuple, "s": set, "f": frozenset, "q": collections.deque}
_DICT_BUILDERS: dict[str, Callable[[list], object]] = {
    "d": dict, "od": collections.OrderedDict, "ct": lambda pairs: collections.Counter(dict(pairs)), "dd": _defaultdict}
