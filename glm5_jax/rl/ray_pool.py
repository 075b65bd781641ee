"""Ray backend: each rollout worker is a Ray actor, for workers that span hosts.

The same ``RolloutWorker`` runs inside the actor; only the transport differs from the local
process pool. An order is a streaming generator call: the actor yields each trajectory when
its episode ends and then ("order_done", ...), so the coordinator sees exactly the messages
it sees from a local process. A dead actor (SIGKILL, node loss) surfaces as an error on its
pending call and is reported in ``poll``'s dead list, then restarted by the coordinator.

Weights still travel through the policy directory, which on several hosts must be a shared
filesystem; ``ray.init`` connects to ``config.ray_address`` or starts a local cluster.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from pathlib import Path
from typing import Any

import ml_collections


class _RolloutActor:
    """The actor body (wrapped with ``ray.remote`` at pool creation)."""

    def __init__(self, worker_id: int, config_json: str, policy_dir: str) -> None:
        import json

        from glm5_jax.rl.rollout_worker import RolloutWorker, configure_jax

        config = ml_collections.ConfigDict(json.loads(config_json))
        configure_jax(config)
        self.worker = RolloutWorker(worker_id, config, policy_dir)

    def pid(self) -> int:
        return os.getpid()

    def warm_up(self):
        yield ("ready", self.worker.warm_up())

    def run(self, order_key: str, orders: list):
        messages: queue.Queue = queue.Queue()
        finished = object()

        def work() -> None:
            try:
                stats = self.worker.run(orders, lambda t: messages.put(("trajectory", t)))
                messages.put(("order_done", order_key, stats))
            except BaseException:  # noqa: BLE001 - shipped to the coordinator
                import traceback

                messages.put(("error", traceback.format_exc()))
            messages.put(finished)

        threading.Thread(target=work, daemon=True).start()
        while (message := messages.get()) is not finished:
            yield message


def _ray():
    import ray

    return ray


class RayWorkerPool:
    def __init__(self, num_workers: int, config: ml_collections.ConfigDict, policy_dir: str) -> None:
        ray = _ray()
        package_root = str(Path(__file__).resolve().parents[2])
        if not ray.is_initialized():
            ray.init(address=config.get("ray_address") or None, include_dashboard=False,
                     num_cpus=config.get("ray_num_cpus") or None, log_to_driver=True,
                     runtime_env={"env_vars": {"PYTHONPATH": package_root}})
        self._owns_ray = True
        self.num_workers = num_workers
        self._config_json = config.to_json()
        self._policy_dir = policy_dir
        self._actor_class = ray.remote(num_cpus=0)(_RolloutActor)
        self._actors: dict[int, Any] = {}
        self._streams: dict[int, Any] = {}  # worker id -> pending ObjectRefGenerator
        self._pids: dict[int, int] = {}
        self.restarts = 0

    def start(self, worker_id: int) -> None:
        ray = _ray()
        actor = self._actor_class.options(name=None, max_restarts=0).remote(
            worker_id, self._config_json, self._policy_dir)
        self._actors[worker_id] = actor
        self._pids[worker_id] = ray.get(actor.pid.remote())
        self._streams[worker_id] = actor.warm_up.remote()

    def start_all(self) -> None:
        for worker_id in range(self.num_workers):
            self.start(worker_id)

    def send(self, worker_id: int, order_key: str, orders: list) -> None:
        self._streams[worker_id] = self._actors[worker_id].run.remote(order_key, orders)

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
                except StopIteration:
                    self._streams.pop(worker_id, None)
                    break
                try:
                    messages.append((worker_id, ray.get(ref)))
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
