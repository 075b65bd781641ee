"""Learner side of weight sync: each learner process streams the shards it holds to every worker.

``publish(version, variables)`` copies the variables on their devices (same sharding: the
learner's next step donates its state, the copy is what travels) and returns at once; a
dispatcher thread sends the copy while the learner trains on. At most two copies exist: the
one in flight and the newest one waiting (a newer publish replaces a waiting one, counted as
``superseded``), so training never waits for a transfer unless the caller asks to
(``wait_delivered``, the lock-step mode).

A transfer is a *round*: the version goes to every connected worker that lacks it, over
``streams`` TCP connections per worker, the process's pieces split over the streams by size,
each piece fetched from its device once and written to every worker's stream in turn (at
most ``streams`` pieces on the host at a time, never the whole model). A worker
acknowledges a version once it has assembled all of it on its devices. A worker whose socket
fails is dropped from the round (the rest go on); when it reconnects it is sent the newest
version. Workers that connect later (restarts) get the newest version in the next round.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from glm5_jax.rl.weight_shards import (OwnedPiece, flatten_dict_tree, layout_id, owned_pieces,
                                       tree_layout)
from glm5_jax.rl.weight_wire import StreamClosed, recv_header, send_frame


@dataclasses.dataclass
class _Snapshot:
    version: int
    layout_id: str
    layout_json: list[dict[str, Any]]
    pieces: list[OwnedPiece]
    plan: list[list[int]]  # per stream: indices into pieces
    published_at: float
    payload_bytes: int  # what one worker receives from this process
    delivered: bool = False


@dataclasses.dataclass
class _Peer:
    """One worker's connections to this process (one session: a restarted worker is new)."""

    worker_id: int
    session: str
    streams: list[socket.socket | None]
    version: int = -1  # newest version it has acknowledged
    layout_sent: set[tuple[int, str]] = dataclasses.field(default_factory=set)  # (stream, layout id)

    @property
    def complete(self) -> bool:
        return all(s is not None for s in self.streams)

    def close(self) -> None:
        for sock in self.streams:
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass


def sender_hosts(config) -> tuple[str, str]:
    """(the host workers dial, the host to listen on) for ``config.weight_sync.host``: loopback
    when every worker runs on this host and the learner is one process, else this host's
    address on the network (listening on every interface)."""
    host = config.weight_sync.host
    if host:
        return host, host if host in ("127.0.0.1", "localhost") else "0.0.0.0"
    local = config.backend == "process" or not config.get("ray_address")
    if local and jax.process_count() == 1:
        return "127.0.0.1", "127.0.0.1"
    return network_address(), "0.0.0.0"


def network_address() -> str:
    """This host's address as other hosts reach it (the interface of the default route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks a route
            return probe.getsockname()[0]
        except OSError:
            return socket.gethostbyname(socket.gethostname())


def gather_addresses(address: str) -> list[str]:
    """Every learner process's sender address, by process index (a collective: every learner
    process calls it)."""
    if jax.process_count() == 1:
        return [address]
    from jax.experimental import multihost_utils

    encoded = np.zeros(256, np.uint8)
    raw = address.encode()
    encoded[:len(raw)] = np.frombuffer(raw, np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(encoded))
    return [bytes(row).rstrip(b"\0").decode() for row in gathered.reshape(jax.process_count(), -1)]


def fetch_to_host(shard: jax.Array) -> np.ndarray:
    """One piece on the host, without leaving a copy behind: where fetching copies (GPU, TPU),
    jax.Array caches the host value on the array, and the snapshot would accumulate a whole
    host copy of the model over a round. (On CPU the result is a view; nothing is cached.)"""
    host = np.asarray(shard)
    if getattr(shard, "_npy_value", None) is not None:
        shard._npy_value = None
    return host


def split_by_size(sizes: list[int], streams: int) -> list[list[int]]:
    """Indices of ``sizes`` over ``streams`` lists of near-equal totals (largest first)."""
    plan: list[list[int]] = [[] for _ in range(streams)]
    totals = [0] * streams
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        target = totals.index(min(totals))
        plan[target].append(index)
        totals[target] += sizes[index]
    return plan


class WeightSender:
    def __init__(self, streams: int = 4, host: str = "127.0.0.1", bind_host: str | None = None,
                 timeout_s: float = 300.0) -> None:
        if streams < 1:
            raise ValueError(f"weight_sync.streams={streams} must be >= 1")
        self.streams = streams
        self.timeout_s = timeout_s
        self._listener = socket.create_server((bind_host or host, 0))
        self.address = f"{host}:{self._listener.getsockname()[1]}"
        self._cond = threading.Condition()
        self._peers: dict[int, _Peer] = {}
        self._connecting: dict[tuple[int, str], _Peer] = {}
        self._current: _Snapshot | None = None
        self._pending: _Snapshot | None = None
        self._layouts: dict[Any, tuple[str, list[dict[str, Any]]]] = {}  # by leaf shapes and shardings
        self._copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
        self._closed = False
        self.superseded = 0
        self.rounds = 0
        self.last: dict[str, float] = {}
        self._threads = [threading.Thread(target=self._accept_loop, name="weight-sync-accept", daemon=True),
                         threading.Thread(target=self._dispatch_loop, name="weight-sync-send", daemon=True)]
        for thread in self._threads:
            thread.start()

    # The learner's calls ---------------------------------------------------------------------
    def publish(self, version: int, variables: Any) -> float:
        """Queue ``version``; returns the seconds the caller spent (the on-device copy's dispatch)."""
        start = time.perf_counter()
        snapshot = self._copy(variables)
        key = tuple((path, leaf.shape, leaf.dtype, leaf.sharding) for path, leaf in flatten_dict_tree(snapshot))
        if key not in self._layouts:
            layout = tree_layout(snapshot)
            self._layouts[key] = (layout_id(layout), [leaf.to_json() for leaf in layout])
        pieces = owned_pieces(snapshot)
        sizes = [piece.nbytes for piece in pieces]
        queued = _Snapshot(version, *self._layouts[key], pieces, split_by_size(sizes, self.streams),
                           start, sum(sizes))
        with self._cond:
            if self._pending is not None:
                self.superseded += 1
            self._pending = queued
            self._cond.notify_all()
        return time.perf_counter() - start

    def wait_delivered(self, version: int, timeout_s: float) -> float:
        """Block until every connected worker has ``version`` (or newer) on its devices; returns
        the seconds waited."""
        start = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while any(peer.version < version for peer in self._peers.values()):
                if time.monotonic() > deadline:
                    behind = {w: p.version for w, p in self._peers.items() if p.version < version}
                    raise TimeoutError(f"weight version {version} not delivered after {timeout_s}s; "
                                       f"workers behind (worker: version): {behind}")
                self._cond.wait(0.05)
        return time.perf_counter() - start

    def connected_workers(self) -> dict[int, int]:
        """worker id -> newest version it acknowledged."""
        with self._cond:
            return {w: p.version for w, p in self._peers.items()}

    def metrics(self) -> dict[str, float]:
        """The newest delivered version's transfer: ``weight_sync_seconds`` from publish to the
        last acknowledgement, ``weight_sync_bytes`` this process sent for it (all workers)."""
        with self._cond:
            return {**self.last, "weight_sync/superseded": float(self.superseded),
                    "weight_sync/rounds": float(self.rounds),
                    "weight_sync/workers": float(len(self._peers))}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            peers = list(self._peers.values()) + list(self._connecting.values())
            self._cond.notify_all()
        try:
            # close() alone does not wake a thread blocked in accept(); shutdown() does (Linux).
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for peer in peers:
            peer.close()
        for thread in self._threads:
            thread.join(timeout=10)

    # Connections -----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._greet, args=(sock,), daemon=True).start()

    def _greet(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(self.timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            hello = recv_header(sock)
            if hello.get("kind") != "hello" or hello.get("streams") != self.streams \
                    or not 0 <= hello.get("stream", -1) < self.streams:
                raise StreamClosed(f"unexpected greeting {hello} (this learner sends over "
                                   f"{self.streams} streams)")
        except (OSError, ValueError):
            sock.close()
            return
        key = (int(hello["worker_id"]), str(hello["session"]))
        with self._cond:
            if self._closed:
                sock.close()
                return
            peer = self._connecting.setdefault(key, _Peer(key[0], key[1], [None] * self.streams))
            if peer.streams[hello["stream"]] is not None:
                peer.streams[hello["stream"]].close()
            peer.streams[hello["stream"]] = sock
            peer.version = max(peer.version, int(hello.get("version", -1)))
            if peer.complete:
                del self._connecting[key]
                previous = self._peers.get(key[0])
                if previous is not None:
                    previous.close()
                self._peers[key[0]] = peer
                self._cond.notify_all()

    def _drop(self, peer: _Peer) -> None:
        peer.close()
        with self._cond:
            if self._peers.get(peer.worker_id) is peer:
                del self._peers[peer.worker_id]
            self._cond.notify_all()

    # Rounds ----------------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    if self._pending is not None:  # the older copy is no longer needed
                        self._current, self._pending = self._pending, None
                    current = self._current
                    targets = [p for p in self._peers.values()
                               if current is not None and p.version < current.version]
                    if targets:
                        break
                    self._cond.wait(0.5)
            self._round(current, targets)

    def _round(self, snapshot: _Snapshot, targets: list[_Peer]) -> None:
        start = time.perf_counter()
        alive = {peer.worker_id: peer for peer in targets}
        guard = threading.Lock()

        def send(peer: _Peer, stream: int, header: dict[str, Any], payload=None) -> None:
            with guard:
                if alive.get(peer.worker_id) is not peer:
                    return
            try:
                send_frame(peer.streams[stream], header, payload)
            except (OSError, ValueError):
                with guard:
                    alive.pop(peer.worker_id, None)
                self._drop(peer)

        def send_stream(stream: int) -> None:
            plan = snapshot.plan[stream]
            for peer in list(alive.values()):
                begin = {"kind": "begin", "version": snapshot.version, "layout_id": snapshot.layout_id,
                         "pieces": len(plan)}
                if (stream, snapshot.layout_id) not in peer.layout_sent:
                    begin["layout"] = snapshot.layout_json
                    peer.layout_sent.add((stream, snapshot.layout_id))
                send(peer, stream, begin)
            for position, index in enumerate(plan):
                piece = snapshot.pieces[index]
                if position + 1 < len(plan):  # start the next piece's device-to-host copy now
                    snapshot.pieces[plan[position + 1]].data.copy_to_host_async()
                host = fetch_to_host(piece.data)
                header = {"kind": "piece", "version": snapshot.version, "leaf": piece.leaf,
                          "bounds": [list(b) for b in piece.bounds], "nbytes": int(host.nbytes)}
                for peer in list(alive.values()):
                    send(peer, stream, header, host)
                del host
            for peer in list(alive.values()):
                send(peer, stream, {"kind": "end", "version": snapshot.version})

        with ThreadPoolExecutor(self.streams, thread_name_prefix="weight-sync-stream") as pool:
            list(pool.map(send_stream, range(self.streams)))
        delivered = []
        for peer in list(alive.values()):
            try:
                while True:
                    ack = recv_header(peer.streams[0])
                    if ack.get("kind") == "staged" and int(ack["version"]) >= snapshot.version:
                        break
                delivered.append(peer)
            except (OSError, ValueError):
                self._drop(peer)
        end = time.perf_counter()
        with self._cond:
            for peer in delivered:
                peer.version = max(peer.version, snapshot.version)
            self.rounds += 1
            if delivered and not snapshot.delivered:
                snapshot.delivered = True
                self.last = {"weight_sync_seconds": end - snapshot.published_at,
                             "weight_sync_bytes": float(snapshot.payload_bytes * len(delivered)),
                             "weight_sync/transfer_seconds": end - start,
                             "weight_sync/version": float(snapshot.version)}
            self._cond.notify_all()
