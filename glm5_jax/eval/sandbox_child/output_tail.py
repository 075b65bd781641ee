"""Bounded capture of a stream: a running byte count plus the last few kilobytes."""

from __future__ import annotations


class OutputTail:
    """Keeps only the end of what was written, so a flood cannot exhaust host memory."""

    def __init__(self, keep_bytes: int) -> None:
        self.keep_bytes = keep_bytes
        self.total_bytes = 0
        self._buffer = bytearray()

    def add(self, data: bytes) -> None:
        self.total_bytes += len(data)
        self._buffer += data
        if len(self._buffer) > 2 * self.keep_bytes:
            del self._buffer[:-self.keep_bytes]

    def text(self) -> str:
        return bytes(self._buffer[-self.keep_bytes:]).decode("utf-8", "replace")
