"""Ray backend: each rollout worker is a Ray actor, for workers that span hosts.

The same ``RolloutWorker`` runs inside the actor; only the transport differs from the local
process pool. Each actor has one streaming generator call for its whole life (``serve``): it
yields "ready", then each trajectory when its episode ends and ("order_done", ...) when an
order's last one does, so the coordinator sees exactly the messages it sees from a local
process; orders go in through ``submit`` calls beside it. A dead actor (SIGKILL, node loss)
surfaces as an error on its stream, or the stream's end, and is reported in ``poll``'s dead
list, then restarted by the coordinator.

Each actor asks Ray for its devices (``config.placement``: ``num_gpus`` or ``resources={"TPU":
k}`` on accelerators, simulated CPU devices otherwise) and receives weights from the learner
processes over their weight-sync sockets, like a local worker (no shared filesystem).
``ray.init`` connects to ``config.ray_address`` or starts a local cluster; a local cluster is
shown only the accelerators the learner leaves free.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
from pathlib import Path
from typing import Any

import ml_collections


class _RolloutActor:
    """The actor body (wrapped with ``ray.remote`` at pool creation)."""

    def __init__(self, worker_id: int, config_json: str, launch: str) -> None:
        import json

        from glm5_jax.rl.rollout_worker import RolloutWorker, configure_worker_process

        config = ml_collections.ConfigDict(json.loads(config_json))
        slot = configure_worker_process(worker_id, config, launch)
        self.worker = RolloutWorker(worker_id, config, launch, slot)
        self._inbox: queue.Queue = queue.Queue()

    def pid(self) -> int:
        return os.getpid()

    def serve(self):
        """The worker's one message stream: "ready" after warm-up, then everything ``serve``
        sends, for as long as the actor lives (orders come in through ``submit``)."""
        yield ("ready", self.worker.warm_up())
        outbox: queue.Queue = queue.Queue()
        finished = object()

        def receive(block: bool):
            try:
                return self._inbox.get(block=block)
            except queue.Empty:
                return None

        def work() -> None:
            try:
                self.worker.serve(receive, outbox.put)
            except BaseException:  # noqa: BLE001 - shipped to the coordinator
                import traceback

                outbox.put(("error", traceback.format_exc()))
            outbox.put(finished)

        threading.Thread(target=work, daemon=True).start()
        while (message := outbox.get()) is not finished:
            yield message

    def submit(self, order_key: str, orders: list) -> None:
        """Runs beside ``serve`` (the actor has two threads): the order joins the worker's inbox."""
        self._inbox.put(("orders", order_key, orders))


def _ray():
    import ray

    return ray


@contextlib.contextmanager
def _local_cluster_accelerators(config: ml_collections.ConfigDict, details: dict, num_workers: int):
    """A local Ray cluster started here sees only the GPUs after the learner's (Ray reads
    CUDA_VISIBLE_DEVICES when it starts); elsewhere nothing changes."""
    from glm5_jax.rl.placement import physical_gpu_ids

    k = config.placement.rollout_devices_per_worker
    if config.get("ray_address") or details["platform"] != "gpu":
        yield
        return
    first = details["learner_local_devices"]
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(physical_gpu_ids(list(range(first, first + num_workers * k))))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


class RayWorkerPool:
    def __init__(self, num_workers: int, config: ml_collections.ConfigDict, launch: str) -> None:
        import json

        from glm5_jax.rl.placement import worker_slot

        ray = _ray()
        package_root = str(Path(__file__).resolve().parents[2])
        details = json.loads(launch)
        self._slots = {w: worker_slot(config, w, details["platform"], details["learner_local_devices"])
                       for w in range(num_workers)}
        if not ray.is_initialized():
            with _local_cluster_accelerators(config, details, num_workers):
                ray.init(address=config.get("ray_address") or None, include_dashboard=False,
                         num_cpus=config.get("ray_num_cpus") or None, log_to_driver=True,
                         runtime_env={"env_vars": {"PYTHONPATH": package_root}})
        self._owns_ray = True
        self.num_workers = num_workers
        self._config_json = config.to_json()
        self._launch = launch
        # Two threads: ``serve`` streams for the actor's whole life, ``submit`` hands it orders.
        self._actor_class = ray.remote(max_concurrency=2)(_RolloutActor)
        self.ready_info: dict[int, dict] = {}  # worker id -> its "ready" message (its placement)
        self._actors: dict[int, Any] = {}
        self._streams: dict[int, Any] = {}  # worker id -> pending ObjectRefGenerator
        self._pids: dict[int, int] = {}
        self.restarts = 0

    def start(self, worker_id: int) -> None:
        ray = _ray()
        actor = self._actor_class.options(name=None, max_restarts=0,
                                          **self._slots[worker_id].ray_options).remote(
            worker_id, self._config_json, self._launch)
        self._actors[worker_id] = actor
        self._pids[worker_id] = ray.get(actor.pid.remote())
        self._streams[worker_id] = actor.serve.remote()

    def start_all(self) -> None:
        for worker_id in range(self.num_workers):
            self.start(worker_id)

    def send(self, worker_id: int, order_key: str, orders: list) -> None:
        self._actors[worker_id].submit.remote(order_key, orders)

    def poll(self, timeout: float) -> tuple[list[tuple[int, tuple]], list[int]]:
        ray = _ray()
        messages, dead = [], []
        if not self._streams:
            import time

            time.sleep(timeout)
            return messages, dead
        by_stream = {id(s): w for w, s in self._streams.items()}
        ready, _ = ray.wait(list(self._streams.values()), num_returns=1, timeout=timeout)
        for stream in ready:
            worker_id = by_stream[id(stream)]
            while True:
                try:
                    ref = next(stream)  # ready: this does not block
                except StopIteration:  # a worker's stream ends only when its serve loop failed
                    self._streams.pop(worker_id, None)
                    dead.append(worker_id)
                    break
                try:
                    message = ray.get(ref)
                    messages.append((worker_id, message))
                    if message[0] == "ready":
                        self.ready_info[worker_id] = message[1]
                except ray.exceptions.RayError:
                    self._streams.pop(worker_id, None)
                    dead.append(worker_id)
                    break
                if not ray.wait([stream], num_returns=1, timeout=0)[0]:
                    break
        return messages, dead

    def restart(self, worker_id: int) -> None:
        self._discard(worker_id)
        self.restarts += 1
        self.start(worker_id)

    def kill(self, worker_id: int, sig: int = signal.SIGKILL) -> int:
        pid = self._pids[worker_id]
        os.kill(pid, sig)
        return pid

    def pid(self, worker_id: int) -> int:
        return self._pids[worker_id]

    def _discard(self, worker_id: int) -> None:
        actor = self._actors.pop(worker_id, None)
        self._streams.pop(worker_id, None)
        if actor is not None:
            try:
                _ray().kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def close(self) -> None:
        for worker_id in list(self._actors):
            self._discard(worker_id)
        if self._owns_ray:
            _ray().shutdown()
