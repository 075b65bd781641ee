"""poisoned_outputs() really exposes unwritten blocks (the kernel tests rely on it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from pallas_kernels import poison


def half_written(x: jax.Array) -> jax.Array:
    """A deliberately broken kernel: grid step 1 forgets to write its block."""

    def kernel(x_ref, o_ref):
        @pl.when(pl.program_id(0) == 0)
        def _():
            o_ref[...] = x_ref[...] * 2

    out_shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
    spec = pl.BlockSpec((8, x.shape[1]), lambda i: (i, 0))
    kernel, args, in_specs, aliases = poison.with_poison(
        kernel, args=[x], in_specs=[spec], out_shape=out_shape)
    return pl.pallas_call(kernel, out_shape=out_shape, grid=(2,), in_specs=in_specs,
                          out_specs=spec, input_output_aliases=aliases, interpret=True)(*args)


def test_unwritten_block_is_nan_only_when_poisoned():
    x = jnp.ones((16, 8), jnp.float32)
    with poison.poisoned_outputs():
        poisoned = np.asarray(jax.jit(half_written)(x))
    assert np.all(poisoned[:8] == 2.0)
    assert np.all(np.isnan(poisoned[8:]))
    assert not poison.enabled()
    plain = np.asarray(jax.jit(half_written)(x))  # new trace outside the context
    assert not np.isnan(plain[:8]).any()
