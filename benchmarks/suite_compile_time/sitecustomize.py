"""Records JAX's compile events in every Python process that imports jax (``report.py`` sums them).

    mkdir -p /tmp/compile_events
    SUITE_COMPILE_EVENTS=/tmp/compile_events PYTHONPATH=benchmarks/suite_compile_time \
        python -m pytest -q -n 2 tests
    python benchmarks/suite_compile_time/report.py /tmp/compile_events

Python imports ``sitecustomize`` at start-up from the path, so the tests' own subprocesses
(training jobs, RL workers, launchers' processes) are recorded too. Nothing happens until a
process imports jax: then a listener of ``jax.monitoring`` duration events is registered, and
at exit the process writes its totals (compile, trace, lowering, cache hits) to
``$SUITE_COMPILE_EVENTS/<pid>.json``. A process killed by a signal writes nothing.
"""

import atexit
import collections
import importlib.abc
import importlib.util
import json
import os
import sys
import time

_START = time.time()
_SECONDS: dict = collections.defaultdict(float)
_COUNTS: dict = collections.defaultdict(int)


def _listen(event, duration, **_):
    _SECONDS[event] += duration
    _COUNTS[event] += 1


def _write():
    directory = os.environ.get("SUITE_COMPILE_EVENTS")
    if not _SECONDS or not directory:
        return
    with open(os.path.join(directory, f"{os.getpid()}.json"), "w") as f:
        json.dump({"argv": sys.argv, "wall_s": time.time() - _START, "cpu_s": time.process_time(),
                   "seconds": _SECONDS, "counts": _COUNTS}, f)


class _AfterJaxImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "jax":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("jax")
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            from jax._src import monitoring

            monitoring.register_event_duration_secs_listener(_listen)
            atexit.register(_write)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("SUITE_COMPILE_EVENTS"):
    sys.meta_path.insert(0, _AfterJaxImport())
