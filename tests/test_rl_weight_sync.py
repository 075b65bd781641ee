"""Weight sync, learner to rollout workers, with no file and no gathered host copy.

* Shard-wise over sockets, an fsdp=4 learner (devices 0-3) into a tensor=2 worker (devices
  4-5) equals a full copy (the whole tree fetched, then put under the worker's sharding) bit
  for bit, leaf for leaf, with the worker's sharding; each distinct piece travels once; the
  learner may delete (donate) its arrays right after ``publish``; ``refresh()`` is False when
  nothing new arrived.
* Two learner processes (``jax.distributed``, fsdp=4 across them): each sends only the pieces
  it holds, a replicated leaf from one process only, and the worker assembles them.
* A stream cut in the middle of a piece, and a sender SIGKILLed mid-version, leave the worker
  on its old version; it takes a whole later version when one comes. A worker SIGKILLed
  mid-transfer is dropped by the learner, which goes on serving the others.
* In one process, ``jax.device_put`` resharding (learner mesh to rollout mesh) equals the source.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from glm5_jax import GLM5Model, init_variables
from glm5_jax.config import get_preset
from glm5_jax.model import logical_partition_specs
from glm5_jax.rl.local_weight_sync import InProcessPolicy, reshard
from glm5_jax.rl.weight_receiver import WeightReceiver
from glm5_jax.rl.weight_sender import WeightSender, split_by_size
from glm5_jax.rl.weight_shards import (flatten_dict_tree, layout_id, owned_pieces,
                                       sharding_by_path, tree_layout)
from glm5_jax.rl.weight_wire import recv_header, send_frame
from glm5_jax.sharding import logical_shardings, make_mesh
from child_env import child_env

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120.0  # bounds a hang; never judges speed


def leaves(tree) -> dict[tuple[str, ...], jax.Array]:
    return dict(flatten_dict_tree(tree))


def assert_bit_equal(got, expected) -> None:
    got, expected = leaves(got), leaves(expected)
    assert got.keys() == expected.keys()
    for path in expected:
        a, b = np.asarray(got[path]), np.asarray(expected[path])
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert a.tobytes() == b.tobytes(), path


def placed_copy(tree, shardings):
    """``tree`` under ``shardings`` in buffers of its own: the tests delete it, as the learner's
    donated step would, and ``device_put`` may reuse a source buffer for a replica."""
    return jax.tree.map(jnp.copy, jax.device_put(tree, shardings))


def worker_mesh():
    return make_mesh("tensor=2", jax.devices()[4:6])


# A small tree with every kind of leaf: fsdp-sharded, replicated, bfloat16, scalar ----------
def synthetic_tree(mesh, scale: float = 1.0, rows: int = 64, cols: int = 12) -> dict:
    fsdp, replicated = NamedSharding(mesh, PartitionSpec("fsdp", None)), NamedSharding(mesh, PartitionSpec())
    kernel = (np.arange(rows * cols, dtype=np.float32).reshape(rows, cols) - 7.5) * scale
    embed = ((np.arange(32 * 8, dtype=np.float32).reshape(32, 8) - 100) * scale / 7).astype(jnp.bfloat16)
    return {"params": {"dense": {"kernel": jax.device_put(kernel, fsdp),
                                 "bias": jax.device_put(np.linspace(-1, 1, cols, dtype=np.float32) * scale,
                                                        replicated)},
                       "embed": jax.device_put(embed, fsdp)},
            "routing": {"count": jax.device_put(np.float32(scale), replicated)}}


def synthetic_bytes(rows: int, cols: int) -> int:
    return rows * cols * 4 + cols * 4 + 32 * 8 * 2 + 4


def synthetic_sharding_for(mesh):
    """The worker's own layout: the kernel split over its columns, the embedding over rows."""
    specs = {("params", "dense", "kernel"): PartitionSpec(None, "tensor"),
             ("params", "embed"): PartitionSpec("tensor", None)}
    return lambda path, shape: NamedSharding(mesh, specs.get(path, PartitionSpec()))


# Shard-wise equals a full copy ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    model = GLM5Model(get_preset("tiny").replace(vocab_size=96, num_hidden_layers=2, first_k_dense_replace=1))
    return model, init_variables(model, jax.random.PRNGKey(3)), logical_partition_specs(model)


def test_shardwise_sync_equals_a_full_copy_bit_for_bit(tiny_model):
    model, variables, specs = tiny_model
    learner_mesh = make_mesh("fsdp=4", jax.devices()[:4])
    source = placed_copy(variables, logical_shardings(learner_mesh, specs, variables))
    assert any("fsdp" in str(leaf.sharding.spec) for leaf in leaves(source).values())
    reference = jax.device_get(source)  # the test's own copy: the learner's arrays are deleted below
    sharding_for = sharding_by_path(worker_mesh(), specs)
    full_copy = {path: jax.device_put(reference_leaf, sharding_for(path, reference_leaf.shape))
                 for path, reference_leaf in leaves(reference).items()}

    sender = WeightSender(streams=3)
    receiver = WeightReceiver([sender.address], sharding_for, worker_id=0, streams=3)
    try:
        assert not receiver.refresh() and receiver.version is None
        sender.publish(1, source)
        jax.tree.map(lambda leaf: leaf.delete(), source)  # the learner's next step donates them
        receiver.wait_for_first(TIMEOUT_S)
        sender.wait_delivered(1, TIMEOUT_S)
        assert receiver.version == 1 and not receiver.refresh()
        received = leaves(receiver.variables)
        assert_bit_equal(receiver.variables, reference)
        for path, leaf in received.items():
            assert leaf.sharding == full_copy[path].sharding, path
            assert {d.id for d in leaf.devices()} == {4, 5}, path
            assert np.asarray(leaf).tobytes() == np.asarray(full_copy[path]).tobytes(), path
        assert any("tensor" in str(leaf.sharding.spec) for leaf in received.values())
        # Every distinct piece once: the model's bytes, replicas not repeated.
        model_bytes = sum(leaf.nbytes for leaf in leaves(reference).values())
        assert sender.metrics()["weight_sync_bytes"] == model_bytes == receiver.received_bytes

        # A second version replaces the first whole; nothing new: refresh() is False.
        second = jax.device_put(jax.tree.map(lambda x: x * 2 + 1, reference),
                                logical_shardings(learner_mesh, specs, variables))
        sender.publish(2, second)
        sender.wait_delivered(2, TIMEOUT_S)
        assert receiver.refresh() and receiver.version == 2 and not receiver.refresh()
        assert_bit_equal(receiver.variables, jax.device_get(second))
        assert sender.metrics()["weight_sync/version"] == 2
    finally:
        receiver.close()
        sender.close()


def test_pieces_split_over_streams_by_size():
    plan = split_by_size([5, 1, 4, 4, 2], 2)
    assert sorted(i for stream in plan for i in stream) == [0, 1, 2, 3, 4]
    assert sorted(sum([5, 1, 4, 4, 2][i] for i in stream) for stream in plan) == [8, 8]


# Two learner processes ------------------------------------------------------------------------
LEARNER_PROCESS = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from glm5_jax import distributed
distributed.initialize()
import jax
from glm5_jax.rl.weight_sender import WeightSender, gather_addresses
from glm5_jax.rl.weight_shards import owned_pieces
from glm5_jax.sharding import make_mesh
from test_rl_weight_sync import synthetic_tree
import time

mesh = make_mesh("fsdp=4")  # two devices in each process
tree = synthetic_tree(mesh, scale=3.0)
sender = WeightSender(streams=2)
addresses = gather_addresses(sender.address)
out = Path({out!r})
if jax.process_index() == 0:
    (out / "addresses.json").write_text(json.dumps(addresses))
deadline = time.monotonic() + 120
while not sender.connected_workers():
    assert time.monotonic() < deadline, "no worker connected"
    time.sleep(0.05)
sender.publish(5, tree)
sender.wait_delivered(5, 120)
pieces = [[p.leaf, [list(b) for b in p.bounds], p.nbytes] for p in owned_pieces(tree)]
(out / f"process_{{jax.process_index()}}.json").write_text(json.dumps(
    {{"bytes": sender.metrics()["weight_sync_bytes"], "pieces": pieces}}))
sender.close()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_each_learner_process_sends_only_its_own_shards(tmp_path):
    script = LEARNER_PROCESS.format(tests=str(REPO / "tests"), out=str(tmp_path))
    port = free_port()
    env = child_env()
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), GLM5_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               GLM5_NUM_PROCESSES="2", GLM5_CPU_DEVICES_PER_PROCESS="2")
    processes = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env={**env, "GLM5_PROCESS_ID": str(i)},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    receiver = None
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "addresses.json").exists():
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes), \
                [p.communicate()[0].decode()[-3000:] for p in processes if p.poll() is not None]
            time.sleep(0.1)
        addresses = json.loads((tmp_path / "addresses.json").read_text())
        assert len(set(addresses)) == 2
        mesh = worker_mesh()
        receiver = WeightReceiver(addresses, synthetic_sharding_for(mesh), worker_id=0, streams=2)
        receiver.wait_for_first(TIMEOUT_S)
        for process in processes:
            output, _ = process.communicate(timeout=TIMEOUT_S)
            assert process.returncode == 0, output.decode()[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        if receiver is not None:
            receiver.close()
    expected = synthetic_tree(make_mesh("fsdp=4", jax.devices()[:4]), scale=3.0)
    assert receiver.version == 5
    assert_bit_equal(receiver.variables, jax.device_get(expected))
    sent = [json.loads((tmp_path / f"process_{i}.json").read_text()) for i in range(2)]
    layout = tree_layout(expected)
    every_piece = sorted([i, [list(b) for b in piece]] for i, leaf in enumerate(layout) for piece in leaf.pieces)
    by_process = [sorted([leaf, bounds] for leaf, bounds, _ in s["pieces"]) for s in sent]
    assert sorted(by_process[0] + by_process[1]) == every_piece  # each piece from one process only
    assert by_process[0] and by_process[1]
    paths = [leaf.path for leaf in layout]
    replicated = {paths.index(("params", "dense", "bias")), paths.index(("routing", "count"))}
    assert sum(1 for leaf, _ in by_process[0] + by_process[1] if leaf in replicated) == 2
    for s in sent:  # the bytes each process reports are exactly its pieces
        assert s["bytes"] == sum(nbytes for _, _, nbytes in s["pieces"])
    assert sum(s["bytes"] for s in sent) == sum(leaf.nbytes for leaf in leaves(expected).values())


# A cut stream never applies a partial version --------------------------------------------------
class FakeLearner:
    """Speaks the wire protocol from a socket it controls, so a version can be cut mid-piece."""

    def __init__(self, tree, streams: int = 2) -> None:
        self.streams = streams
        self.layout = tree_layout(tree)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"

    def accept(self) -> list[socket.socket]:
        connections = [None] * self.streams
        for _ in range(self.streams):
            sock, _ = self.listener.accept()
            hello = recv_header(sock)
            connections[hello["stream"]] = sock
        return connections

    def send_version(self, connections, version: int, tree, cut_after: int | None = None) -> None:
        """All pieces over stream 0 (layout and begin on every stream); with ``cut_after``, the
        piece after that many is sent half and stream 0 closes."""
        pieces = owned_pieces(tree)
        for stream, sock in enumerate(connections):
            send_frame(sock, {"kind": "begin", "version": version, "layout_id": layout_id(self.layout),
                              "pieces": len(pieces) if stream == 0 else 0,
                              "layout": [leaf.to_json() for leaf in self.layout]})
        for count, piece in enumerate(pieces):
            host = np.ascontiguousarray(np.asarray(piece.data))
            header = {"kind": "piece", "version": version, "leaf": piece.leaf,
                      "bounds": [list(b) for b in piece.bounds], "nbytes": host.nbytes}
            if count == cut_after:
                raw = host.reshape(-1).view(np.uint8)
                encoded = json.dumps(header).encode()
                connections[0].sendall(len(encoded).to_bytes(4, "big") + encoded + raw[:raw.size // 2].tobytes())
                close_after_the_reader(connections[0])
                return
            send_frame(connections[0], header, host)
        for sock in connections:
            send_frame(sock, {"kind": "end", "version": version})

    def close(self) -> None:
        self.listener.close()


def close_after_the_reader(sock: socket.socket) -> None:
    """End the stream so that the receiver reads every byte sent before it sees the end.

    A plain ``close`` with unread bytes in this side's buffer (a second "staged" answer, sent
    when a stream's "begin" comes after the version was already staged) makes the kernel send
    a reset, and the receiver's kernel then throws away the bytes it had not yet read: the
    pieces sent before the cut would vanish. So: half-close, read until the receiver hangs up
    (it does once it meets the cut), then close."""
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(TIMEOUT_S)
    while sock.recv(65536):
        pass
    sock.close()


def test_a_stream_cut_mid_piece_keeps_the_old_version(tmp_path):
    learner_mesh = make_mesh("fsdp=4", jax.devices()[:4])
    first, second, third = (synthetic_tree(learner_mesh, scale) for scale in (1.0, -2.0, 5.0))
    assert len(owned_pieces(second)) > 3
    fake = FakeLearner(first)
    receiver = WeightReceiver([fake.address], synthetic_sharding_for(worker_mesh()), worker_id=0, streams=2)
    try:
        connections = fake.accept()
        fake.send_version(connections, 1, first)
        receiver.wait_for_first(TIMEOUT_S)
        assert recv_header(connections[0]) == {"kind": "staged", "version": 1}
        before = receiver.received_bytes
        fake.send_version(connections, 2, second, cut_after=3)  # 3 whole pieces, half a fourth
        reconnected = fake.accept()  # the receiver dials again once the stream broke
        for sock in connections[1:]:
            sock.close()
        assert receiver.received_bytes > before  # version 2 had begun arriving
        assert receiver.newest_version() == 1 and not receiver.refresh() and receiver.version == 1
        assert_bit_equal(receiver.variables, jax.device_get(first))
        # A later whole version is taken whole.
        fake.send_version(reconnected, 3, third)
        deadline = time.monotonic() + TIMEOUT_S
        while not receiver.refresh():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert receiver.version == 3
        assert_bit_equal(receiver.variables, jax.device_get(third))
    finally:
        receiver.close()
        fake.close()


SENDER_PROCESS = """
import sys, time
sys.path.insert(0, {tests!r})
import jax
from glm5_jax.rl.weight_sender import WeightSender
from glm5_jax.sharding import make_mesh
from test_rl_weight_sync import synthetic_tree

mesh = make_mesh("fsdp=4")
sender = WeightSender(streams=2)
print(sender.address, flush=True)
while not sender.connected_workers():
    time.sleep(0.05)
sender.publish(1, synthetic_tree(mesh, 1.0))
sender.wait_delivered(1, 120)
print("delivered 1", flush=True)
sender.publish(2, synthetic_tree(mesh, -1.0, rows=4096, cols=4096))  # 16 MiB pieces: more than a socket holds
time.sleep(600)
"""


def slow_down_version(receiver: WeightReceiver, version: int, arrived: threading.Event) -> None:
    """Make ``receiver`` take 0.3 s per piece of ``version`` (so a transfer is still under way
    when the test kills its peer) and signal the first piece."""
    add_piece = receiver._add_piece

    def slow_add_piece(piece_version, *args):
        if piece_version == version:
            arrived.set()
            time.sleep(0.3)
        return add_piece(piece_version, *args)

    receiver._add_piece = slow_add_piece


def test_a_sender_killed_mid_version_leaves_the_old_version(tmp_path):
    env = {**child_env(cpu_devices=4), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    sender = subprocess.Popen([sys.executable, "-c", SENDER_PROCESS.format(tests=str(REPO / "tests"))],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    receiver = None
    try:
        address = sender.stdout.readline().strip()
        assert ":" in address, address + sender.stdout.read()[-3000:]
        receiver = WeightReceiver([address], synthetic_sharding_for(worker_mesh()), worker_id=0, streams=2)
        arrived = threading.Event()
        slow_down_version(receiver, 2, arrived)
        receiver.wait_for_first(TIMEOUT_S)
        assert arrived.wait(TIMEOUT_S), "version 2 never began"
        sender.send_signal(signal.SIGKILL)
        sender.wait(timeout=30)
        time.sleep(3.0)  # the receiver drains what the kernel had buffered, then sees the cut
        assert receiver.newest_version() == 1 and not receiver.refresh() and receiver.version == 1
        assert_bit_equal(receiver.variables, jax.device_get(synthetic_tree(make_mesh("fsdp=4", jax.devices()[:4]))))
        # It was cut mid-version: some of version 2 arrived, not all of it.
        first_bytes, second_bytes = synthetic_bytes(64, 12), synthetic_bytes(4096, 4096)
        assert first_bytes < receiver.received_bytes < first_bytes + second_bytes
    finally:
        if sender.poll() is None:
            sender.kill()
        if receiver is not None:
            receiver.close()


RECEIVER_PROCESS = """
import sys, threading
sys.path.insert(0, {tests!r})
import jax
from glm5_jax.rl.weight_receiver import WeightReceiver
from glm5_jax.sharding import make_mesh
from test_rl_weight_sync import slow_down_version, synthetic_sharding_for

receiver = WeightReceiver([{address!r}], synthetic_sharding_for(make_mesh("tensor=2")), worker_id=7, streams=2)
arrived = threading.Event()
slow_down_version(receiver, 2, arrived)
receiver.wait_for_first(120)
print("have", receiver.version, flush=True)
arrived.wait(120)
print("receiving 2", flush=True)
threading.Event().wait(600)
"""


def test_the_learner_drops_a_worker_killed_mid_transfer_and_serves_the_others(tmp_path):
    learner_mesh = make_mesh("fsdp=4", jax.devices()[:4])
    sender = WeightSender(streams=2)
    env = {**child_env(cpu_devices=2), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    doomed = subprocess.Popen(
        [sys.executable, "-c", RECEIVER_PROCESS.format(tests=str(REPO / "tests"), address=sender.address)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    survivor = WeightReceiver([sender.address], synthetic_sharding_for(worker_mesh()), worker_id=1, streams=2)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while set(sender.connected_workers()) != {1, 7}:
            assert time.monotonic() < deadline and doomed.poll() is None, doomed.stdout.read()[-3000:]
            time.sleep(0.05)
        sender.publish(1, synthetic_tree(learner_mesh, 1.0))
        sender.wait_delivered(1, TIMEOUT_S)
        assert doomed.stdout.readline().split() == ["have", "1"]
        big = synthetic_tree(learner_mesh, -1.0, rows=4096, cols=4096)  # 16 MiB pieces
        sender.publish(2, big)
        assert doomed.stdout.readline().strip() == "receiving 2"
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
        sender.wait_delivered(2, TIMEOUT_S)  # returns: the dead worker no longer counts
        assert sender.connected_workers() == {1: 2}
        assert survivor.refresh() and survivor.version == 2
        assert_bit_equal(survivor.variables, jax.device_get(big))
        sender.publish(3, synthetic_tree(learner_mesh, 4.0))  # and it goes on
        sender.wait_delivered(3, TIMEOUT_S)
        assert survivor.refresh() and survivor.version == 3
    finally:
        if doomed.poll() is None:
            doomed.kill()
        survivor.close()
        sender.close()


# In one process: device_put resharding --------------------------------------------------------
def test_in_process_resharding_equals_the_source(tiny_model):
    model, variables, specs = tiny_model
    source = placed_copy(variables, logical_shardings(make_mesh("fsdp=4", jax.devices()[:4]), specs, variables))
    reference = jax.device_get(source)
    sharding_for = sharding_by_path(worker_mesh(), specs)
    moved = reshard(source, sharding_for)
    assert_bit_equal(moved, reference)
    for path, leaf in leaves(moved).items():
        assert leaf.sharding == sharding_for(path, leaf.shape) and {d.id for d in leaf.devices()} == {4, 5}

    policy = InProcessPolicy(sharding_for)
    assert not policy.refresh()
    policy.push(4, source)
    jax.tree.map(lambda leaf: leaf.delete(), source)  # a copy: the learner may donate its own
    assert policy.refresh() and policy.version == 4 and not policy.refresh()
    assert_bit_equal(policy.variables, reference)


def test_in_process_resharding_onto_overlapping_devices_is_still_a_copy():
    """jax.device_put lets a replica share the source's buffer; reshard must not (the learner
    donates its state on the next step)."""
    mesh = make_mesh("fsdp=4", jax.devices()[:4])
    source = placed_copy(synthetic_tree(mesh, 2.0), jax.tree.map(lambda leaf: leaf.sharding,
                                                                    synthetic_tree(mesh)))
    reference = jax.device_get(source)
    replicated_on_overlap = lambda path, shape: NamedSharding(make_mesh("tensor=2", jax.devices()[:2]),  # noqa: E731
                                                              PartitionSpec())
    moved = reshard(source, replicated_on_overlap)
    jax.tree.map(lambda leaf: leaf.delete(), source)
    assert_bit_equal(moved, reference)


def test_a_version_sent_again_is_acknowledged_again():
    """If a worker's acknowledgement was lost (its connection broke just then), the learner
    sends the version again; the worker, which has it, must say so rather than stay silent
    (the learner would wait for it until its timeout)."""
    tree = synthetic_tree(make_mesh("fsdp=4", jax.devices()[:4]))
    fake = FakeLearner(tree)
    receiver = WeightReceiver([fake.address], synthetic_sharding_for(worker_mesh()), worker_id=0, streams=2)
    try:
        connections = fake.accept()
        fake.send_version(connections, 1, tree)
        assert recv_header(connections[0]) == {"kind": "staged", "version": 1}
        fake.send_version(connections, 1, tree)
        connections[0].settimeout(TIMEOUT_S)
        assert recv_header(connections[0]) == {"kind": "staged", "version": 1}
        assert receiver.refresh() and receiver.version == 1 and not receiver.refresh()
    finally:
        receiver.close()
        fake.close()


def test_close_ends_the_senders_threads():
    """The accept thread blocks in accept(); closing the listening socket does not wake it, so
    close() used to wait out its join timeout (10 s at the end of every RL run) and return
    with the thread still running."""
    sender = WeightSender(streams=2)
    sender.close()
    assert not [thread.name for thread in sender._threads if thread.is_alive()]


def test_publish_returns_while_a_version_is_in_flight_and_a_newer_one_replaces_a_waiting_one():
    """Double-buffered: ``publish`` returns at once (the learner trains on, and may donate its
    arrays) while the version travels; a version published meanwhile waits, and a newer one
    replaces it (``superseded``); the worker ends on the newest, whole."""
    mesh = make_mesh("fsdp=4", jax.devices()[:4])
    trees = {version: synthetic_tree(mesh, float(version)) for version in (1, 2, 3, 4)}
    references = {version: jax.device_get(tree) for version, tree in trees.items()}
    sender = WeightSender(streams=2)
    receiver = WeightReceiver([sender.address], synthetic_sharding_for(worker_mesh()), worker_id=0, streams=2)
    arrived = threading.Event()
    slow_down_version(receiver, 2, arrived)  # version 2 takes >= 1.5 s (10 pieces x 0.3 s, 2 streams)
    try:
        while not sender.connected_workers():
            time.sleep(0.01)
        sender.publish(1, trees[1])
        sender.wait_delivered(1, TIMEOUT_S)
        sender.publish(2, trees[2])
        jax.tree.map(lambda leaf: leaf.delete(), trees[2])  # the learner's next step donates them
        assert arrived.wait(TIMEOUT_S)
        sender.publish(3, trees[3])
        sender.publish(4, trees[4])
        assert sender.connected_workers() == {0: 1}  # all published; version 2 still on its way
        sender.wait_delivered(4, TIMEOUT_S)
        metrics = sender.metrics()
        assert metrics["weight_sync/superseded"] == 1 and metrics["weight_sync/version"] == 4
        assert receiver.refresh() and receiver.version == 4
        assert_bit_equal(receiver.variables, references[4])
    finally:
        receiver.close()
        sender.close()
