"""Rematerialisation of a scanned block: what its forward pass keeps for the backward.

* ``none``: everything the backward needs is stored, per layer (fastest, most memory).
* ``full``: only the block's input is stored; the backward recomputes the block's forward
  (memory of one block's activations at a time, ~1/3 more FLOPs).
* ``save_dots``: matmul outputs without batch dimensions (the projections) are stored and
  the rest (norms, activations, attention logits and probabilities) is recomputed.
* ``save_dots_offload``: as ``save_dots``, but the saved matmul outputs go to pinned host
  memory (TPU/GPU; XLA moves them back for the backward).
"""

from __future__ import annotations

import jax
from flax import linen as nn

from glm5_jax.config import REMAT_POLICIES


def checkpoint_policy(name: str):
    """The ``jax.checkpoint`` policy of a ``remat_policy`` name (None for "full")."""
    policies = jax.checkpoint_policies
    if name == "full":
        return None  # nothing saveable: recompute all of it
    if name == "save_dots":
        return policies.dots_with_no_batch_dims_saveable
    if name == "save_dots_offload":
        return policies.offload_dot_with_no_batch_dims("device", "pinned_host")
    raise ValueError(f"remat_policy={name!r} has no checkpoint policy; allowed: "
                     f"{list(REMAT_POLICIES)}")


def rematerialised(module_class: type[nn.Module], name: str) -> type[nn.Module]:
    """``module_class`` wrapped so its forward is recomputed in the backward per ``name``."""
    if name == "none":
        return module_class
    return nn.remat(module_class, policy=checkpoint_policy(name), prevent_cse=False)
