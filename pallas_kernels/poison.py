"""Poisoned outputs: make every block a kernel forgets to write fail a test.

Why: a Pallas output buffer starts with whatever the allocator left there, which in the
interpreter is usually zeros -- exactly the value many masked blocks should hold, so a
kernel that skips a block can pass by accident. Inside ``poisoned_outputs()`` every
kernel in this package aliases its outputs to NaN-filled inputs (``input_output_aliases``),
so an unwritten element stays NaN and any comparison against a reference fails.

The flag is read when a kernel is traced; functions jitted outside the context keep
their cached, unpoisoned trace.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

_STATE = threading.local()


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Within this context, kernels pre-fill their outputs with NaN (ints: min value)."""
    previous = getattr(_STATE, "enabled", False)
    _STATE.enabled = True
    try:
        yield
    finally:
        _STATE.enabled = previous


def enabled() -> bool:
    return getattr(_STATE, "enabled", False)


def _poison_value(dtype: Any) -> Any:
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.nan
    return jnp.iinfo(dtype).min


def with_poison(
    kernel: Callable[..., None],
    *,
    args: Sequence[jax.Array],
    in_specs: Sequence[Any],
    out_shape: Any,
    num_scalar_prefetch: int = 0,
) -> tuple[Callable[..., None], list[jax.Array], list[Any], dict[int, int]]:
    """Returns (kernel, args, in_specs, input_output_aliases), poisoned when enabled.

    The poison buffers are appended after the real inputs and live in ``pl.ANY`` memory,
    so no backend copies them into fast memory; the wrapped kernel drops their refs.
    """
    args, in_specs = list(args), list(in_specs)
    if not enabled():
        return kernel, args, in_specs, {}
    outs = jax.tree.leaves(out_shape)
    first_poison = num_scalar_prefetch + len(args)
    poison = [jnp.full(o.shape, _poison_value(o.dtype), o.dtype) for o in outs]
    aliases = {first_poison + i: i for i in range(len(outs))}
    num_real = len(args)

    def poisoned_kernel(*refs):
        split = num_scalar_prefetch + num_real
        kernel(*refs[:split], *refs[split + len(outs):])

    return (
        poisoned_kernel,
        args + poison,
        in_specs + [pl.BlockSpec(memory_space=pl.ANY) for _ in outs],
        aliases,
    )
