"""A pool of sandbox workers: many independent samples, a bounded number at a time.

Each worker is one zygote (and, as root, one exclusive uid). A sample occupies its
worker only until its own verdict, so a runaway sample costs at most its timeout on
one worker; the other workers keep going, and a worker whose helper died is restarted
on its next sample.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import queue
import threading
from collections.abc import Iterable, Sequence

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.policy import IsolationPolicy
from glm5_jax.eval.results import ExecutionResult
from glm5_jax.eval.zygote_client import ZygoteClient


@dataclasses.dataclass(frozen=True)
class SandboxJob:
    """A program and the test snippets to run after it, each guarded separately."""

    program: str
    tests: tuple[str, ...] = ()
    limits: SandboxLimits | None = None  # None: the pool's default limits
    # Builtin or stdlib-module names the tests take from the program (MBPP 126 defines
    # ``sum``). Any other such name the program rebinds stays the real one for the tests.
    names_from_program: tuple[str, ...] = ()


class SandboxPool:
    """``SandboxPool(workers=N).map(programs)``: run samples in parallel sandboxes.

    Thread-safe; use as a context manager (or call ``close``) so helpers and uids are
    released.
    """

    def __init__(self, workers: int | None = None, limits: SandboxLimits | None = None,
                 policy: IsolationPolicy | None = None) -> None:
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.limits = limits or SandboxLimits()
        self.policy = policy or IsolationPolicy()
        self._idle: queue.SimpleQueue[ZygoteClient] = queue.SimpleQueue()
        self._clients: list[ZygoteClient] = []
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.workers, thread_name_prefix="sandbox")
        self._closed = False

    def run(self, program: str, tests: Sequence[str] = (),
            limits: SandboxLimits | None = None,
            names_from_program: Sequence[str] = ()) -> ExecutionResult:
        """Run one sample on a free worker, blocking until its verdict."""
        client = self._checkout()
        try:
            return client.run((program, *tests), limits or self.limits,
                              tuple(names_from_program))
        finally:
            self._idle.put(client)

    def submit(self, job: SandboxJob | str) -> concurrent.futures.Future[ExecutionResult]:
        job = job if isinstance(job, SandboxJob) else SandboxJob(job)
        if self._closed:
            raise RuntimeError("SandboxPool is closed")
        return self._executor.submit(self.run, job.program, job.tests, job.limits,
                                     job.names_from_program)

    def map(self, jobs: Iterable[SandboxJob | str]) -> list[ExecutionResult]:
        """Results in the order of ``jobs``; a plain string is a program without tests."""
        futures = [self.submit(job) for job in jobs]
        return [future.result() for future in futures]

    def helper_pids(self) -> list[int]:
        """Pids of the live zygotes (for health checks)."""
        with self._lock:
            return [c.pid for c in self._clients if c.pid is not None]

    def held_uids(self) -> list[int]:
        """The sandbox uids this pool's workers hold (as root); no other pool has them."""
        with self._lock:
            return [c.uid for c in self._clients if c.uid is not None]

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=True)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _checkout(self) -> ZygoteClient:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if len(self._clients) < self.workers:
                client = ZygoteClient(self.policy)
                self._clients.append(client)
                return client
        return self._idle.get()
