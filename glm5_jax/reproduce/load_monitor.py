"""The machine's load while a table runs: timings on a shared host mean little without it.

A daemon thread samples the 1-minute load average every ``interval_s``; ``summary()`` gives
its min, median and max, which the table's provenance records beside the measured tokens/s.
"""

from __future__ import annotations

import os
import statistics
import threading
from typing import Self


class LoadMonitor:
    def __init__(self, interval_s: float = 10.0):
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="load-monitor")

    def __enter__(self) -> Self:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        self._sample()

    def _sample(self) -> None:
        try:
            self.samples.append(os.getloadavg()[0])
        except OSError:  # not available on this platform
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def summary(self) -> dict[str, float] | None:
        """1-minute load average over the run: min, median, max (None if unavailable)."""
        if not self.samples:
            return None
        return {"min": round(min(self.samples), 2), "median": round(statistics.median(self.samples), 2),
                "max": round(max(self.samples), 2), "samples": len(self.samples),
                "cpu_count": os.cpu_count()}
