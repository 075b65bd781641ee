"""The XLA flags every test process compiles with, and the environment of the processes tests launch.

Tests compile hundreds of tiny programs and run each a few times, so XLA:CPU compile time is most
of the suite's time. LLVM at -O0 and the legacy (non-MLIR) fusion emitters halve it
(tests/test_train_step_numbers.py on a cold cache: 42.6 s -> 21.0 s); the programs run slower,
which these tiny shapes do not notice. Benchmarks and real runs do not set these flags.
"""

from __future__ import annotations

import os

TEST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def child_env(cpu_devices: int | None = None) -> dict[str, str]:
    """This process's environment for a child: the suite's compile flags, and ``cpu_devices``
    simulated devices (None: no device-count flag, the child or its launcher picks)."""
    flags = TEST_COMPILE_FLAGS
    if cpu_devices is not None:
        flags += f" --xla_force_host_platform_device_count={cpu_devices}"
    return {**os.environ, "XLA_FLAGS": flags}
