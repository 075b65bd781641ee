"""Messages with descriptors between the harness's long-lived processes.

A sandbox serves several samples in turn (``supervisor``): its init and its judge live
across them and receive each sample's fresh pipe ends with the message that starts it,
over a ``SOCK_SEQPACKET`` pair (one message per send, descriptors as ``SCM_RIGHTS``).
Only harness processes ever hold these sockets.
"""

from __future__ import annotations

import select
import socket

MAX_MESSAGE_BYTES = 1 << 16
MAX_DESCRIPTORS = 16


def control_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected ends; neither is inherited across exec (none happens here anyway)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(channel: socket.socket, message: bytes, fds: list[int] = ()) -> None:
    if fds:
        socket.send_fds(channel, [message], list(fds))
    else:
        channel.send(message)


def receive(channel: socket.socket) -> tuple[bytes, list[int]]:
    """The next message and its descriptors; ``b""`` when the other end is gone."""
    message, fds, _, _ = socket.recv_fds(channel, MAX_MESSAGE_BYTES, MAX_DESCRIPTORS)
    return message, fds


def receive_within(channel: socket.socket, timeout_s: float) -> bytes | None:
    """A message without descriptors, or None if none came in time."""
    if not select.select([channel], [], [], timeout_s)[0]:
        return None
    try:
        return channel.recv(MAX_MESSAGE_BYTES)
    except OSError:
        return b""
