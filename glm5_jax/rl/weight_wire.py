"""The weight-sync wire: length-prefixed frames over TCP, a JSON header and raw bytes.

A frame is a 4-byte big-endian header length, the header (JSON), then ``header["nbytes"]``
raw bytes (absent for control frames). Per connection ("stream"), learner to worker::

    {"kind": "begin", "version": V, "layout_id": L, "pieces": n, "layout": [...]?}
    n x {"kind": "piece", "version": V, "leaf": i, "bounds": [[start, stop], ...], "nbytes": b} + b bytes
    {"kind": "end", "version": V}

(the layout travels once per connection, then only its id). Worker to learner: on connecting
``{"kind": "hello", "worker_id", "session", "stream", "streams", "version"}``; on stream 0,
once a version is assembled on the worker's devices, ``{"kind": "staged", "version": V}``.

A receiver counts a piece only once all its bytes are in, so a stream cut anywhere (a killed
sender, a dropped connection) leaves at most an incomplete piece, which is discarded.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import numpy as np

_LENGTH = struct.Struct(">I")
MAX_HEADER_BYTES = 64 << 20
CHUNK_BYTES = 4 << 20


class StreamClosed(ConnectionError):
    """The peer closed the connection (or it broke) before a whole frame arrived."""


def send_frame(sock: socket.socket, header: dict[str, Any], payload: np.ndarray | None = None) -> None:
    encoded = json.dumps(header, separators=(",", ":")).encode()
    sock.sendall(_LENGTH.pack(len(encoded)) + encoded)
    if payload is not None:
        sock.sendall(memoryview(np.ascontiguousarray(payload).reshape(-1).view(np.uint8)))


def _recv_exact_into(sock: socket.socket, view: memoryview) -> None:
    received = 0
    while received < len(view):
        count = sock.recv_into(view[received:], min(len(view) - received, CHUNK_BYTES))
        if count == 0:
            raise StreamClosed(f"connection closed after {received} of {len(view)} bytes")
        received += count


def recv_header(sock: socket.socket) -> dict[str, Any]:
    length = bytearray(_LENGTH.size)
    _recv_exact_into(sock, memoryview(length))
    (size,) = _LENGTH.unpack(length)
    if size > MAX_HEADER_BYTES:
        raise StreamClosed(f"a {size}-byte header is not a weight-sync frame")
    encoded = bytearray(size)
    _recv_exact_into(sock, memoryview(encoded))
    return json.loads(encoded)


def recv_payload(sock: socket.socket, nbytes: int) -> np.ndarray:
    """The frame's raw bytes, as uint8 (the caller views them with the piece's dtype)."""
    buffer = np.empty(nbytes, np.uint8)
    _recv_exact_into(sock, memoryview(buffer))
    return buffer


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"weight-sync address {address!r} must look like host:port")
    return host, int(port)


def connect(address: str, timeout_s: float) -> socket.socket:
    sock = socket.create_connection(parse_address(address), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
