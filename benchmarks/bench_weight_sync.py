"""Weight sync, learner to a rollout worker: shard by shard over sockets against the host's
copy bandwidth, the weight files it replaced, and in-process ``device_put`` resharding.

    python benchmarks/bench_weight_sync.py --megabytes 128 --repeats 5 \
        --out benchmarks/results/weight_sync.md

One process with 8 simulated CPU devices holds the learner's weights, fsdp=4 on devices 0-3
(``--megabytes`` in float32 leaves shaped like a model's: a few large matrices, some
replicated vectors). Side by side, each ``--repeats`` times, the same bytes:

* **socket sync** (ours, ``weight_sender`` -> ``weight_receiver``): the worker is its own
  process with 2 devices (tensor=2); one version from ``publish`` until the worker has
  assembled it on its devices and acknowledged it; with 1 and with 4 streams;
* **weight file** (what the loop did before): fetch the whole tree to the host, msgpack it,
  write it atomically, then read it back, restore it and put it under the worker's
  sharding (one process here: the reader's fixed costs are not counted);
* **device_put** (``local_weight_sync.reshard``): learner mesh to a rollout mesh on devices 4-5
  of the same process;
* **host copy**: ``np.copyto`` of a buffer of the same size, the host's copy bandwidth, which
  any transfer through host memory is bounded by;
* **raw loopback socket**: the same bytes through one TCP connection between two threads, the
  transport's own ceiling on this host.

The paths take turns, one repeat of each per round (a warm-up round first, not counted), so
the box's load swings reach all of them alike.

Medians are printed with the load average: on the shared 2-core box a ratio is only
meaningful as measured side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if "BENCH_WEIGHT_SYNC_RECEIVER" not in os.environ:  # the worker process keeps its own 2 devices
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import serialization  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from glm5_jax.rl.local_weight_sync import reshard  # noqa: E402
from glm5_jax.rl.weight_sender import WeightSender  # noqa: E402
from glm5_jax.rl.weight_shards import flatten_dict_tree  # noqa: E402
from glm5_jax.sharding import make_mesh  # noqa: E402

HIDDEN = 1024
RECEIVER = """
import sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
from bench_weight_sync import worker_sharding_for
from glm5_jax.rl.weight_receiver import WeightReceiver
from glm5_jax.sharding import make_mesh
receiver = WeightReceiver([{address!r}], worker_sharding_for(make_mesh("tensor=2")), worker_id=0,
                          streams={streams})
sys.stdin.read()  # until the benchmark closes it
receiver.close()
"""


def model_like_tree(megabytes: int) -> dict[str, np.ndarray]:
    """float32 layers of [HIDDEN, 4 * HIDDEN] and [4 * HIDDEN, HIDDEN] plus a norm vector each."""
    layer_bytes = 2 * 4 * HIDDEN * HIDDEN * 4
    layers = max(1, megabytes * 2**20 // layer_bytes)
    rng = np.random.default_rng(0)
    tree = {}
    for i in range(layers):
        tree[f"layer_{i:02d}"] = {
            "up": rng.standard_normal((HIDDEN, 4 * HIDDEN), np.float32),
            "down": rng.standard_normal((4 * HIDDEN, HIDDEN), np.float32),
            "norm": rng.standard_normal((HIDDEN,), np.float32)}
    return {"params": tree}


def learner_sharding_for(mesh):
    return lambda path, shape: NamedSharding(mesh, PartitionSpec("fsdp") if len(shape) == 2 else PartitionSpec())


def worker_sharding_for(mesh):
    """The worker's layout: matrices split over their other dimension (tensor parallel)."""
    def sharding_for(path, shape):
        if len(shape) != 2:
            return NamedSharding(mesh, PartitionSpec())
        return NamedSharding(mesh, PartitionSpec(None, "tensor") if path[-1] == "up" else PartitionSpec("tensor", None))
    return sharding_for


def tree_bytes(tree) -> int:
    return sum(int(np.asarray(leaf).nbytes) for _, leaf in flatten_dict_tree(tree))


class SocketSync:
    """A sender here and a worker process with its own 2 devices (tensor=2), connected."""

    def __init__(self, streams: int) -> None:
        self.sender = WeightSender(streams=streams)
        self.worker = subprocess.Popen(
            [sys.executable, "-c", RECEIVER.format(root=str(ROOT), bench=str(ROOT / "benchmarks"),
                                                   address=self.sender.address, streams=streams)],
            stdin=subprocess.PIPE, env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                                        "BENCH_WEIGHT_SYNC_RECEIVER": "1"})
        deadline = time.monotonic() + 300
        while not self.sender.connected_workers():
            if time.monotonic() > deadline or self.worker.poll() is not None:
                raise SystemExit("the receiver process did not connect")
            time.sleep(0.05)
        self.version = 0

    def once(self, learner_tree) -> float:
        """Publish to the worker's acknowledgement of the version assembled on its devices."""
        self.version += 1
        self.sender.publish(self.version, learner_tree)
        self.sender.wait_delivered(self.version, 600)
        return self.sender.metrics()["weight_sync_seconds"]

    def close(self) -> None:
        self.worker.stdin.close()
        self.worker.wait(timeout=60)
        self.sender.close()


def weight_file_once(learner_tree, worker_shardings, directory: Path) -> float:
    path = directory / "policy_v1.msgpack"
    start = time.perf_counter()
    data = serialization.msgpack_serialize(jax.device_get(learner_tree))
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
    restored = serialization.msgpack_restore(path.read_bytes())
    jax.block_until_ready(reshard(restored, worker_shardings))
    return time.perf_counter() - start


def device_put_once(learner_tree, worker_shardings) -> float:
    start = time.perf_counter()
    jax.block_until_ready(reshard(learner_tree, worker_shardings))
    return time.perf_counter() - start


class RawSocket:
    """The transport's own ceiling: the same bytes through one loopback TCP connection, from
    one buffer into another (no framing, no device, no assembly)."""

    def __init__(self, nbytes: int) -> None:
        import socket
        import threading

        listener = socket.create_server(("127.0.0.1", 0))
        self.source = np.ones(nbytes, np.uint8)
        self.sink = np.empty(nbytes, np.uint8)
        self.received = threading.Semaphore(0)
        self.sender = socket.create_connection(listener.getsockname())
        self.receiver, _ = listener.accept()
        listener.close()

        def drain() -> None:
            view = memoryview(self.sink)
            while True:
                got = 0
                while got < len(view):
                    count = self.receiver.recv_into(view[got:], min(len(view) - got, 4 << 20))
                    if count == 0:
                        return
                    got += count
                self.received.release()

        threading.Thread(target=drain, daemon=True).start()

    def once(self) -> float:
        start = time.perf_counter()
        self.sender.sendall(memoryview(self.source))
        self.received.acquire()
        return time.perf_counter() - start

    def close(self) -> None:
        self.sender.close()
        self.receiver.close()


def host_copy_once(source: np.ndarray, target: np.ndarray) -> float:
    start = time.perf_counter()
    np.copyto(target, source)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    host = model_like_tree(args.megabytes)
    learner = reshard(host, learner_sharding_for(make_mesh("fsdp=4", jax.devices()[:4])))
    jax.block_until_ready(learner)
    worker_shardings = worker_sharding_for(make_mesh("tensor=2", jax.devices()[4:6]))
    nbytes = tree_bytes(host)
    del host

    source = np.random.default_rng(1).integers(0, 255, nbytes, dtype=np.uint8)
    target = np.empty_like(source)
    one_stream, four_streams, raw_socket = SocketSync(1), SocketSync(4), RawSocket(nbytes)
    names = ["host copy (np.copyto), the bound", "raw loopback socket, 1 connection (the transport)",
             "socket sync, 1 stream (ours)",
             "socket sync, 4 streams (ours)",
             "weight file: device_get + msgpack + write + read + restore + device_put (before)",
             "device_put resharding, in one process"]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    try:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_FILE_DIR")) as directory:
            measure = [lambda: host_copy_once(source, target), raw_socket.once,
                       lambda: one_stream.once(learner),
                       lambda: four_streams.once(learner),
                       lambda: weight_file_once(learner, worker_shardings, Path(directory)),
                       lambda: device_put_once(learner, worker_shardings)]
            for round_index in range(args.repeats + 1):  # round 0 warms up (compilations, pages)
                for name, once in zip(names, measure):  # interleaved: load swings hit all alike
                    value = once()
                    if round_index:
                        seconds[name].append(value)
    finally:
        one_stream.close()
        four_streams.close()
        raw_socket.close()
    rows = [(name, statistics.median(seconds[name]), seconds[name]) for name in names]
    copy_bandwidth = nbytes / rows[0][1]
    load = os.getloadavg()
    lines = [
        f"Command: `python benchmarks/bench_weight_sync.py --megabytes {args.megabytes} --repeats "
        f"{args.repeats}{' --out ' + args.out if args.out else ''}` (load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores).",
        "",
        f"{nbytes / 2**20:.0f} MiB of float32 weights, fsdp=4 on 4 simulated CPU devices, to a "
        "worker with 2 devices (tensor=2); median of "
        f"{args.repeats} repeats; bytes/s relative to the host's copy bandwidth measured in the same run:",
        "",
        "| path | median s | MiB/s | of host copy bandwidth | all repeats (s) |",
        "|---|---|---|---|---|"]
    for name, median, seconds in rows:
        rate = nbytes / median
        lines.append(f"| {name} | {median:.4f} | {rate / 2**20:,.0f} | {rate / copy_bandwidth:.2f}x | "
                     + ", ".join(f"{s:.4f}" for s in seconds) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text("## Weight sync\n\n" + text)


if __name__ == "__main__":
    main()
