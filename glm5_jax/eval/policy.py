"""How strongly a sample is isolated from the host, and which uids it may run as.

The defaults ask for everything the kernel allows; the helper processes record what
they actually got in ``ExecutionResult.isolation`` so weaker fallbacks are visible.
"""

from __future__ import annotations

import dataclasses
import sys


@dataclasses.dataclass(frozen=True)
class IsolationPolicy:
    """Knobs of the sandbox that are about isolation rather than resource sizes.

    ``uid_base``/``uid_count``: when the host runs as root, every live sample gets its own
    unprivileged uid from this range (default 60600-60999, a block that systemd's
    UIDS-GIDS.md leaves unused), so that process-count limits, signals and file
    permissions separate concurrent samples from each other as well as from the host.
    """

    use_namespaces: bool = True  # new net/pid/mount/ipc/uts namespaces where permitted
    drop_privileges: bool = True  # as root, run the code as an unprivileged uid
    uid_base: int = 60600
    uid_count: int = 400
    hash_seed: int | None = 0  # PYTHONHASHSEED of the sandbox; None means random per helper
    python: str = sys.executable  # interpreter for the helper processes
    preload_modules: tuple[str, ...] = (
        # imported once per worker and inherited by every sample through fork:
        # the common imports of HumanEval/MBPP-style code then cost nothing per sample
        "array", "bisect", "cmath", "collections", "copy", "datetime", "decimal",
        "fractions", "functools", "hashlib", "heapq", "itertools", "json", "math",
        "operator", "random", "re", "statistics", "string", "typing",
    )
