"""The sample's side of the judge boundary: export the program's names, answer calls.

Runs in the runner, after the program's top level, as unprivileged sample code's
neighbour: nothing here is trusted and nothing here needs to be. The sample may patch
or replace all of it; the most it can achieve is to send the judge some plain data,
which is what any function of its own could have returned. (Its pipe primitives are
bound when this module is imported, so a program that patches ``os.write`` for its own
reasons still gets its calls answered rather than hanging until the clock runs out.)
"""

from __future__ import annotations

import os
import types

from glm5_jax.eval.sandbox_child import plain_data
from glm5_jax.eval.sandbox_child.framing import HEADER

MAX_CALL_BYTES = 64 << 20
MAX_MESSAGE_CHARS = 2000


class HandleTable:
    """Objects the judge may refer to by number: exported functions, returned objects."""

    def __init__(self) -> None:
        self.objects: list[object] = []

    def register(self, value: object) -> int:
        self.objects.append(value)
        return len(self.objects) - 1

    def lookup(self, handle: int, type_name: str) -> object:
        if not 0 <= handle < len(self.objects):
            raise plain_data.PlainDataError(f"no object with handle {handle}")
        return self.objects[handle]


def exported_names(namespace: dict, table: HandleTable) -> str:
    """The program's top-level names as ``[name, "m", module] | [name, "v", value]``."""
    entries = []
    for name, value in list(namespace.items()):
        if not isinstance(name, str) or name.startswith("__"):
            continue
        if isinstance(value, types.ModuleType):
            entries.append([name, "m", str(getattr(value, "__name__", ""))])
        else:
            entries.append([name, "v", value])
    return plain_data.encode(entries, table.register)


def send(fd: int, text: str, *, _write=os.write, _pack=HEADER.pack) -> None:
    payload = text.encode("utf-8", "surrogatepass")
    data = memoryview(_pack(len(payload)) + payload)
    while data:
        data = data[_write(fd, data):]


def receive(fd: int, *, _read=os.read, _unpack=HEADER.unpack) -> bytes | None:
    """One frame, or None once the judge hung up (or sent an absurd size)."""
    header = read_exact_with(_read, fd, HEADER.size)
    if header is None:
        return None
    (size,) = _unpack(header)
    return read_exact_with(_read, fd, size) if size <= MAX_CALL_BYTES else None


def read_exact_with(read, fd: int, size: int) -> bytes | None:
    """Exactly ``size`` bytes through ``read`` (a primitive bound before sample code ran),
    or None if the stream ends first."""
    chunks = b""
    while len(chunks) < size:
        chunk = read(fd, size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return chunks


def serve_calls(call_fd: int, reply_fd: int, table: HandleTable, *, _exit=os._exit) -> None:
    """Answer the judge's calls until it hangs up; then exit."""
    while True:
        payload = receive(call_fd)
        if payload is None:
            _exit(0)
        send(reply_fd, answer(payload, table))


def answer(payload: bytes, table: HandleTable) -> str:
    try:
        operation, target, first, second = plain_data.decode(payload, table.lookup)
        if operation == "call":
            value = target(*first, **second)
        elif operation == "getattr":
            value = getattr(target, first)
        else:
            raise plain_data.PlainDataError(f"unknown operation {operation!r}")
    except BaseException as exc:  # noqa: BLE001 - the candidate's failure is the judge's data
        return plain_data.encode(("raised", _class_names(exc), _message(exc)))
    try:
        return plain_data.encode(("ok", value), table.register)
    except plain_data.PlainDataError as exc:
        return plain_data.encode(("not plain", str(exc)))
    except BaseException as exc:  # noqa: BLE001 - e.g. a generator that raised while drained
        return plain_data.encode(("raised", _class_names(exc), _message(exc)))


def _class_names(exc: BaseException) -> list[str]:
    try:
        return [str(kind.__name__) for kind in type(exc).__mro__]
    except BaseException:  # noqa: BLE001
        return ["Exception"]


def _message(exc: BaseException) -> str:
    try:
        return str(exc)[:MAX_MESSAGE_CHARS]
    except BaseException:  # noqa: BLE001
        return "<unprintable message>"
