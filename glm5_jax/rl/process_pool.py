"""Local backend: each rollout worker is a separate OS process, spoken to over its own pipe.

Why one duplex pipe per worker rather than one shared queue: a worker killed with SIGKILL in
the middle of a write can leave half a message behind; on a shared queue that would corrupt
every other worker's stream, on its own pipe it only ends that worker's (the reader sees EOF).
Processes are started with "spawn": JAX is not fork-safe. Each process sets its own devices
(``config.placement``, through ``configure_worker_process``) before its JAX starts.

Messages, worker -> coordinator: ("ready", info), ("trajectory", Trajectory),
("order_done", order_key, stats), ("error", text). Coordinator -> worker: ("orders",
order_key, [GroupOrder]), ("stop",).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any

import ml_collections


def worker_process_main(worker_id: int, conn: Connection, config_json: str, launch: str) -> None:
    config = ml_collections.ConfigDict(__import__("json").loads(config_json))
    from glm5_jax.rl.rollout_worker import RolloutWorker, configure_worker_process

    worker = None
    try:
        slot = configure_worker_process(worker_id, config, launch)
        worker = RolloutWorker(worker_id, config, launch, slot)
        conn.send(("ready", worker.warm_up()))
        worker.serve(lambda block: conn.recv() if block or conn.poll() else None, conn.send)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the coordinator went away
    except BaseException:  # noqa: BLE001 - report anything, then die
        try:
            conn.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if worker is not None:
            worker.close()


class ProcessWorkerPool:
    """Start, talk to, watch and restart worker processes."""

    def __init__(self, num_workers: int, config: ml_collections.ConfigDict, launch: str) -> None:
        self.num_workers = num_workers
        self._config_json = config.to_json()
        self._launch = launch  # rollout_worker.worker_launch: weight-sync addresses, platform
        self.ready_info: dict[int, dict] = {}  # worker id -> its "ready" message (its placement)
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[int, Any] = {}
        self._conns: dict[int, Connection] = {}
        self.restarts = 0

    def start(self, worker_id: int) -> None:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker_process_main, name=f"rollout-worker-{worker_id}", daemon=True,
            args=(worker_id, child_end, self._config_json, self._launch))
        process.start()
        child_end.close()  # so the parent sees EOF when the child dies
        self._processes[worker_id] = process
        self._conns[worker_id] = parent_end

    def start_all(self) -> None:
        for worker_id in range(self.num_workers):
            self.start(worker_id)

    def send(self, worker_id: int, order_key: str, orders: list) -> None:
        self._conns[worker_id].send(("orders", order_key, orders))

    def poll(self, timeout: float) -> tuple[list[tuple[int, tuple]], list[int]]:
        """(messages as (worker_id, message), workers that died) within ``timeout`` seconds."""
        by_conn = {conn: worker_id for worker_id, conn in self._conns.items()}
        messages, dead = [], []
        for conn in wait(list(by_conn), timeout=timeout):
            worker_id = by_conn[conn]
            try:
                while conn.poll():
                    messages.append((worker_id, conn.recv()))
            except (EOFError, OSError, ConnectionResetError, __import__("pickle").UnpicklingError):
                dead.append(worker_id)
        for worker_id, message in messages:
            if message[0] == "ready":
                self.ready_info[worker_id] = message[1]
        for worker_id, process in self._processes.items():
            if not process.is_alive() and worker_id not in dead:
                # Read what it sent before dying, then report it.
                try:
                    while self._conns[worker_id].poll():
                        messages.append((worker_id, self._conns[worker_id].recv()))
                except (EOFError, OSError, __import__("pickle").UnpicklingError):
                    pass
                dead.append(worker_id)
        return messages, dead

    def restart(self, worker_id: int) -> None:
        self._discard(worker_id)
        self.restarts += 1
        self.start(worker_id)

    def kill(self, worker_id: int, sig: int = signal.SIGKILL) -> int:
        """Send a signal to a worker (tests use SIGKILL); returns its pid."""
        pid = self._processes[worker_id].pid
        os.kill(pid, sig)
        return pid

    def pid(self, worker_id: int) -> int:
        return self._processes[worker_id].pid

    def _discard(self, worker_id: int) -> None:
        process = self._processes.pop(worker_id, None)
        conn = self._conns.pop(worker_id, None)
        if conn is not None:
            conn.close()
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join(timeout=10)

    def close(self) -> None:
        for worker_id, conn in list(self._conns.items()):
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for worker_id, process in list(self._processes.items()):
            process.join(timeout=10)
            self._discard(worker_id)
