"""Preemption: SIGTERM (TPU maintenance, SLURM preemption) stops a run at a step boundary
that every process agrees on, after a checkpoint, so the rerun continues bit for bit.

One process: a SIGTERM handler sets a flag that the loop reads after each step. Several
processes: they may receive the signal at different steps, and a checkpoint is a
collective, so JAX's preemption service decides (``multihost_utils.
reached_preemption_sync_point``): its SIGTERM notifier tells the coordinator, which picks
the first step every process can still reach; each process asks at every step.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    """``should_stop(step)`` after every step; a context manager: leaving it restores the
    previous SIGTERM handler."""

    def __init__(self):
        self._multiprocess = jax.process_count() > 1
        self._signalled = threading.Event()
        self._previous = None
        if not self._multiprocess and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self._signalled.set()

    def should_stop(self, step: int) -> bool:
        if self._multiprocess:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def __enter__(self) -> "PreemptionWatch":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
