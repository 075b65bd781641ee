"""Length-prefixed frames over pipes, shared by the host and the helper processes.

A pipe is a byte stream; a 4-byte big-endian length before each message lets either side
take exactly one message at a time, and lets a reader reject absurd sizes up front
instead of buffering whatever a misbehaving writer sends.
"""

from __future__ import annotations

import os
import struct

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 256 << 20


def encode_frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    return HEADER.pack(len(payload)) + payload


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of all of ``data`` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_exact(fd: int, size: int) -> bytes | None:
    """Blocking read of exactly ``size`` bytes; None if the stream ends first."""
    chunks = []
    remaining = size
    while remaining:
        chunk = os.read(fd, remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, max_bytes: int = MAX_FRAME_BYTES) -> bytes | None:
    """Blocking read of one frame; None on a clean end of stream."""
    header = read_exact(fd, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    if size > max_bytes:
        raise ValueError(f"frame of {size} bytes exceeds {max_bytes}")
    payload = read_exact(fd, size)
    if payload is None:
        raise EOFError("stream ended inside a frame")
    return payload


class FrameBuffer:
    """Incremental frame parser for non-blocking readers (the supervisor's select loop)."""

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max_bytes = max_bytes

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def pop(self) -> bytes | None:
        """The next complete frame, or None; ValueError if the declared size is absurd."""
        if len(self._buffer) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self._buffer)
        if size > self._max_bytes:
            raise ValueError(f"frame of {size} bytes exceeds {self._max_bytes}")
        end = HEADER.size + size
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER.size:end])
        del self._buffer[:end]
        return payload

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)
