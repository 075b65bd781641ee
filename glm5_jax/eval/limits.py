"""Resource ceilings for one sandboxed sample.

Stdlib-only on purpose: the sandbox helper processes import this module too, and they
must start fast and must not pull in jax or anything else from the host package.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-sample ceilings; the defaults suit HumanEval/MBPP-sized programs.

    Each field is enforced by the kernel (an rlimit, a cgroup or a size-limited tmpfs) or
    by the trusted supervisor process, never by code running inside the sandbox. Where
    cgroups are usable, ``memory_bytes`` and ``max_processes`` also bound the sample's whole
    process tree (resident memory, scratch files included), not only each process.
    """

    timeout_s: float = 10.0  # wall clock for the program plus all of its tests
    cpu_s: int | None = None  # RLIMIT_CPU; None means ceil(timeout_s) + 1
    memory_bytes: int = 1 << 30  # RLIMIT_AS (address space)
    file_size_bytes: int = 16 << 20  # RLIMIT_FSIZE (largest file it may write)
    max_processes: int = 16  # RLIMIT_NPROC for the sandbox's own uid (threads count)
    max_open_files: int = 64  # RLIMIT_NOFILE
    output_limit_bytes: int = 8 << 20  # stdout+stderr in total before the sample is killed
    output_tail_bytes: int = 4096  # how much of the end of each stream the result keeps
    scratch_bytes: int = 64 << 20  # size of each private tmpfs (/tmp, /var/tmp, /dev/shm)
    cpu_cores: float | None = 1.0  # CPU share of the whole tree, where cgroups are available

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        for name in ("memory_bytes", "file_size_bytes", "max_processes", "max_open_files",
                     "output_limit_bytes", "output_tail_bytes", "scratch_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.cpu_cores is not None and not self.cpu_cores > 0:
            raise ValueError(f"cpu_cores must be positive or None, got {self.cpu_cores}")

    @property
    def effective_cpu_s(self) -> int:
        """CPU seconds: a backstop behind the wall clock, so by default a little above it."""
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "SandboxLimits":
        return cls(**fields)
