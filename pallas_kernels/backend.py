"""Which kernel formulation to build, and how to run it.

Why: a Pallas kernel is written for one compiler. Mosaic TPU pipelines blocks through
VMEM and lets index maps read scalar-prefetched metadata; Triton runs independent
programs that may gather with vectors of pointers but cannot revisit an output block.
The kernels in this package therefore come in a "tpu" and a "gpu" formulation that
share their math, and this module decides, once per call, which one to trace:

* ``backend`` is "tpu", "gpu" or "cpu" (None: ``jax.default_backend()``).
* ``interpret`` None means "interpret when running on cpu".
* On cpu the kernels run in Pallas interpret mode with the "tpu" formulation;
  tests also run the "gpu" formulation in interpret mode by passing backend="gpu".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

BACKENDS = ("tpu", "gpu", "cpu")


def resolve_backend(backend: str | None) -> str:
    """Maps None/"cuda"/"rocm" onto one of BACKENDS."""
    name = jax.default_backend() if backend is None else backend
    name = {"cuda": "gpu", "rocm": "gpu"}.get(name, name)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    return name


def resolve_interpret(interpret: bool | pltpu.InterpretParams | None, backend: str) -> Any:
    """None means: interpret exactly when this process runs on cpu (so backend="gpu" on
    a cpu host interprets the Triton formulation); compiling for "cpu" is impossible."""
    if interpret is None:
        return backend == "cpu" or jax.default_backend() == "cpu"
    if backend == "cpu" and not interpret:
        raise ValueError("Pallas kernels have no compiled cpu backend; use interpret=True")
    if isinstance(interpret, pltpu.InterpretParams):
        return interpret  # TPU interpret mode: simulated DMAs, semaphores, race detection
    return bool(interpret)


def formulation(backend: str) -> str:
    """The kernel formulation a backend uses: cpu interprets the tpu formulation."""
    return "gpu" if backend == "gpu" else "tpu"


def compiler_params(backend: str, dimension_semantics: Sequence[str], interpret: bool) -> Any:
    """Compiler parameters for a pallas_call (None when interpreting).

    GPU kernels ask for Triton explicitly: recent JAX defaults Pallas-on-GPU to Mosaic GPU,
    which has no vector gathers or masked stores.
    """
    if interpret:
        return None
    if backend == "tpu":
        return pltpu.CompilerParams(dimension_semantics=tuple(dimension_semantics))
    return pltriton.CompilerParams(num_warps=4, num_stages=2)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def fit_block(dim: int, block: int, backend: str, *, minor: bool, itemsize: int = 4) -> int:
    """The block to use for a dimension of size ``dim``.

    It is ``block``, or less when the whole dimension is smaller, so tiny inputs do not
    pad up to a full default block. The result respects the backend's tiling: a multiple
    of the TPU tile (8/16 sublanes, 128 lanes), a power of two of at least 16 for Triton,
    a multiple of 8 in the interpreter.
    """
    dim = max(int(dim), 1)
    if backend == "gpu":
        fitted = 16
        while fitted < dim:
            fitted *= 2
        return min(block, fitted)
    if backend == "tpu":
        align = 128 if minor else max(8, 32 // itemsize)
    else:
        align = 8
    return min(block, round_up(dim, align))
