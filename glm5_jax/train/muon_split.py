"""Which parameters Muon orthogonalises, and along which axes ("Muon Split").

Muon orthogonalises each weight *matrix*'s momentum. Our kernels keep heads, experts and
scanned layers as explicit axes, so "the matrix" must be chosen; optax's
``MuonDimensionNumbers`` names the reduction (input) and output axes, and every other axis is
a batch axis, orthogonalised independently. The choices, read from the logical axis names:

* scanned ``layers`` and ``expert`` axes are always batch axes: one matrix per layer and
  per routed expert (each expert is its own linear map).
* MLA up-projections (``q_b_proj`` [q_lora, heads, qk_head_dim], ``kv_b_proj`` [kv_lora,
  heads, nope + v]) and the indexer's ``wq_b`` [q_lora, index_heads, head_dim] are split per
  head (GLM-5's Muon Split): the reduction axis is the low-rank latent, the output axis is
  the head dim, and the head axis is a batch axis. Orthogonalising the whole [lora,
  heads * head_dim] matrix instead couples the heads: one head with large gradients takes
  the spectrum and the others' updates shrink toward zero. ``split_heads=False`` keeps that
  whole-matrix variant for ablations.
* ``o_proj`` [heads, v, hidden] is one matrix [heads * v, hidden] (as the reference's single
  Linear); it is a down-projection and the paper splits only the up-projections.
* everything else with two matrix axes is the obvious [in, out] matrix.

AdamW keeps what Muon is not meant for: the embedding, the output head, norm weights/biases
and the router's gate (a small [hidden, experts] map whose scale is the routing decision).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import PartitionSpec
from optax.contrib import MuonDimensionNumbers

BATCH_AXES = ("layers", "expert")
LATENT_AXES = ("q_lora", "kv_lora")
HEAD_AXES = ("heads", "index_heads")
ADAMW_AXES = ("vocab", "norm", "router_expert")


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


def dimension_numbers_for(axes: tuple[str | None, ...], split_heads: bool = True
                          ) -> MuonDimensionNumbers | None:
    """Muon's axes for a kernel with logical ``axes``, or None when AdamW should own it."""
    if any(name in ADAMW_AXES for name in axes):
        return None
    matrix_axes = [i for i, name in enumerate(axes) if name not in BATCH_AXES]
    if len(matrix_axes) < 2:
        return None
    names = [axes[i] for i in matrix_axes]
    if names[0] in LATENT_AXES and len(names) == 3 and names[1] in HEAD_AXES:
        latent, heads, head_dim = matrix_axes
        if split_heads:
            return MuonDimensionNumbers(reduction_axis=latent, output_axis=head_dim)
        return MuonDimensionNumbers(reduction_axis=latent, output_axis=(heads, head_dim))
    return MuonDimensionNumbers(reduction_axis=tuple(matrix_axes[:-1]), output_axis=matrix_axes[-1])


def muon_dimension_numbers(logical_specs: Any, split_heads: bool = True) -> Any:
    """A tree like the params: MuonDimensionNumbers for Muon's matrices, None for AdamW's."""
    return jax.tree.map(lambda spec: dimension_numbers_for(tuple(spec), split_heads),
                        logical_specs, is_leaf=_is_spec)


def is_muon_leaf(dims: Any) -> bool:
    return dims is None or isinstance(dims, MuonDimensionNumbers)
