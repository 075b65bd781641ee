"""Worker side of weight sync: the policy a rollout reads, fed by every learner process.

``WeightReceiver`` is the ``Policy`` of ``glm5_jax.rl.rollout``: ``version``, ``variables`` and
``refresh() -> bool``. Threads receive pieces from every learner process (``streams``
connections each) and assemble each leaf under this worker's sharding as soon as its last
piece is in, so the host holds only pieces still waiting for their leaf. When every leaf of a
version is on the devices the version is *staged* and acknowledged to the learners;
``refresh()`` swaps it in, between episodes or turns (or decode steps), and costs one
attribute read when nothing new arrived.

A version is staged only whole: a piece counts once all its bytes arrived, and a version is
dropped unfinished when a newer one begins. A stream cut mid-piece (a killed learner, a
dropped connection) therefore leaves the current and staged versions untouched; the
connection is re-established and the learner sends its newest version again.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from typing import Any

import numpy as np

from glm5_jax.rl.staged_policy import StagedPolicy
from glm5_jax.rl.weight_shards import (
    Bounds,
    LeafLayout,
    ShardingFor,
    assemble_leaf,
    unflatten_dict_tree,
)
from glm5_jax.rl.weight_wire import (
    StreamClosed,
    connect,
    recv_header,
    recv_payload,
    send_frame,
)

RECONNECT_SECONDS = 0.5


@dataclasses.dataclass
class _Assembly:
    """One version being put together."""

    version: int
    layout: list[LeafLayout]
    started: float
    pieces: list[dict[Bounds, np.ndarray]]  # per leaf: host pieces not yet assembled
    arrays: list[Any]  # per leaf: the assembled array, or None
    leaves_left: int


class WeightReceiver(StagedPolicy):
    def __init__(self, addresses: list[str], sharding_for: ShardingFor, worker_id: int,
                 streams: int = 4, timeout_s: float = 300.0) -> None:
        super().__init__()
        self.addresses = list(addresses)
        self.sharding_for = sharding_for
        self.worker_id = worker_id
        self.streams = streams
        self.timeout_s = timeout_s
        self.session = uuid.uuid4().hex
        self.received_bytes = 0
        self._assembly: _Assembly | None = None
        self._layouts: dict[str, list[LeafLayout]] = {}
        self._lock = threading.Lock()
        self._staged_event = threading.Condition(self._lock)
        self._ack_sockets: dict[str, Any] = {}
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._serve, args=(address,), daemon=True,
                                          name=f"weight-sync-receive-{address}")
                         for address in self.addresses]
        for thread in self._threads:
            thread.start()

    # The rollout's calls ---------------------------------------------------------------------
    def wait_for_first(self, timeout_s: float = 600.0) -> None:
        with self._staged_event:
            if not self._staged_event.wait_for(lambda: self._staged is not None, timeout_s):
                raise TimeoutError(f"no weights from the learner ({self.addresses}) after {timeout_s}s")
        self.refresh()

    def newest_version(self) -> int:
        staged = self._staged
        return -1 if staged is None else staged[0]

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            sockets = list(self._ack_sockets.values())
        for group in sockets:
            for sock in group:
                try:
                    sock.close()
                except OSError:
                    pass
        for thread in self._threads:
            thread.join(timeout=10)

    # Connections -----------------------------------------------------------------------------
    def _serve(self, address: str) -> None:
        """Keep ``streams`` connections to one learner process open and read them."""
        while not self._closed.is_set():
            sockets = []
            try:
                for stream in range(self.streams):
                    sock = connect(address, self.timeout_s)
                    sock.settimeout(None)  # a stream may idle between versions for any time
                    sockets.append(sock)
                    send_frame(sock, {"kind": "hello", "worker_id": self.worker_id,
                                      "session": self.session, "stream": stream,
                                      "streams": self.streams, "version": self.newest_version()})
                with self._lock:
                    self._ack_sockets[address] = sockets
                broken = threading.Event()
                readers = [threading.Thread(target=self._read_stream, args=(sock, sockets[0], broken),
                                            daemon=True) for sock in sockets]
                for reader in readers:
                    reader.start()
                while not broken.is_set() and not self._closed.is_set():
                    broken.wait(0.2)
            except OSError:
                pass
            finally:
                with self._lock:
                    if self._ack_sockets.get(address) is sockets:
                        del self._ack_sockets[address]
                for sock in sockets:
                    try:
                        sock.close()
                    except OSError:
                        pass
            self._closed.wait(RECONNECT_SECONDS)

    def _read_stream(self, sock, ack_sock, broken: threading.Event) -> None:
        try:
            while True:
                header = recv_header(sock)
                if header["kind"] == "begin":
                    have = self._begin(header)
                    if have is not None:  # a resend of what is staged: its acknowledgement was lost
                        send_frame(ack_sock, {"kind": "staged", "version": have})
                elif header["kind"] == "piece":
                    raw = recv_payload(sock, int(header["nbytes"]))  # all of it, or StreamClosed
                    self._add_piece(int(header["version"]), int(header["leaf"]),
                                    tuple(tuple(b) for b in header["bounds"]), raw)
        except (OSError, ValueError, KeyError, StreamClosed):
            broken.set()

    # Assembly --------------------------------------------------------------------------------
    def _begin(self, header: dict[str, Any]) -> int | None:
        """Start assembling the version; the staged version if it is already that or newer."""
        version = int(header["version"])
        with self._lock:
            if "layout" in header:
                self._layouts[header["layout_id"]] = [LeafLayout.from_json(leaf) for leaf in header["layout"]]
            layout = self._layouts[header["layout_id"]]
            if self._staged is not None and version <= self._staged[0]:
                return self._staged[0]
            if self._assembly is not None and self._assembly.version >= version:
                return None  # another stream began it; an unfinished one is kept and filled in
            self._assembly = _Assembly(version, layout, time.perf_counter(),
                                       [{} for _ in layout], [None] * len(layout), len(layout))
            return None

    def _add_piece(self, version: int, leaf_index: int, bounds: Bounds, raw: np.ndarray) -> None:
        with self._lock:
            assembly = self._assembly
            if assembly is None or assembly.version != version:
                return  # of a version dropped or already staged
            leaf = assembly.layout[leaf_index]
            pieces = assembly.pieces[leaf_index]
            if bounds in pieces or assembly.arrays[leaf_index] is not None:
                return
            shape = tuple(stop - start for start, stop in bounds)
            pieces[bounds] = raw.view(_numpy_dtype(leaf.dtype)).reshape(shape)
            self.received_bytes += raw.nbytes
            if len(pieces) < len(leaf.pieces):
                return
            assembly.pieces[leaf_index] = {}
        # The last piece of this leaf: put the leaf on this worker's devices (outside the lock).
        array = assemble_leaf(leaf, pieces, self.sharding_for(leaf.path, leaf.shape))
        with self._lock:
            if self._assembly is not assembly:
                return
            assembly.arrays[leaf_index] = array
            assembly.leaves_left -= 1
            if assembly.leaves_left:
                return
            variables = unflatten_dict_tree([(leaf.path, array)
                                             for leaf, array in zip(assembly.layout, assembly.arrays)])
            self._staged = (version, variables)
            self._assembly = None
            self.load_seconds += time.perf_counter() - assembly.started
            self._staged_event.notify_all()
            ack_sockets = [group[0] for group in self._ack_sockets.values()]
        for sock in ack_sockets:
            try:
                send_frame(sock, {"kind": "staged", "version": version})
            except OSError:
                pass  # that learner reconnects and learns the version from the greeting


def _numpy_dtype(name: str):
    import jax.numpy as jnp

    return np.dtype(jnp.dtype(name))
