"""Grouped matmul as padded blocks of rows: the MoE's expert matmuls at their active cost where
``jax.lax.ragged_dot`` has no native lowering.

On CPU, ragged_dot falls back to masking the rows into a dense [experts, rows, d] operand and
multiplying every row by every expert: E times the work of the tokens' chosen experts. Here
the rows (sorted by expert, ``group_sizes`` [E]; rows past sum(group_sizes) belong to no
expert, as dynamic routing's dropped slots do) are laid out in a [num_blocks, block, d]
buffer in which each expert's run is padded to a multiple of ``block``, so every block holds
rows of one expert; each block multiplies its expert's weight, gathered per block. Work:
(rows + E * (block - 1)) * d * f instead of E * rows * d * f. The per-block weight gather holds
num_blocks * d * f values, rows / block times a weight's size: right for small models on CPU,
wrong at scale, where ``moe_impl="ragged_dot"`` (native on GPU/TPU) or ``"pallas"`` apply.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

BLOCK_ROWS = 16  # rows per block: padding waste is at most E * (BLOCK_ROWS - 1) rows


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """Where each sorted row sits in the padded buffer, and which expert owns each block."""

    destination: jax.Array  # [rows] int32; num_blocks * block (out of range) for rows of no expert
    block_expert: jax.Array  # [num_blocks] int32; blocks past the last run: any expert, all zeros
    num_blocks: int
    block: int

    def to_blocks(self, rows: jax.Array) -> jax.Array:
        """[rows, d] -> [num_blocks, block, d], padding zero."""
        buffer = jnp.zeros((self.num_blocks * self.block, rows.shape[-1]), rows.dtype)
        buffer = buffer.at[self.destination].set(rows, mode="drop")
        return buffer.reshape(self.num_blocks, self.block, rows.shape[-1])

    def from_blocks(self, blocks: jax.Array) -> jax.Array:
        """[num_blocks, block, d] -> [rows, d]; rows of no expert get zeros."""
        flat = blocks.reshape(self.num_blocks * self.block, blocks.shape[-1])
        return flat.at[self.destination].get(mode="fill", fill_value=0)

    def matmul(self, blocks: jax.Array, weights: jax.Array) -> jax.Array:
        """blocks [num_blocks, block, d] x weights [E, d, f] (each block by its expert's)."""
        return jnp.einsum("nbd,ndf->nbf", blocks, weights[self.block_expert])


def block_layout(group_sizes: jax.Array, num_rows: int, block: int = BLOCK_ROWS) -> BlockLayout:
    """The layout of ``num_rows`` rows sorted by expert into runs of ``group_sizes`` [E]."""
    num_experts = group_sizes.shape[0]
    num_blocks = -(-(num_rows + num_experts * (block - 1)) // block)  # static upper bound
    group_sizes = group_sizes.astype(jnp.int32)
    ends = jnp.cumsum(group_sizes)
    starts = ends - group_sizes
    padded = (group_sizes + block - 1) // block * block
    padded_ends = jnp.cumsum(padded)
    padded_starts = padded_ends - padded
    row = jnp.arange(num_rows, dtype=jnp.int32)
    expert = jnp.searchsorted(ends, row, side="right").astype(jnp.int32)  # E: no expert
    owned = jnp.minimum(expert, num_experts - 1)
    destination = jnp.where(expert < num_experts, padded_starts[owned] + row - starts[owned],
                            num_blocks * block)
    block_start = jnp.arange(num_blocks, dtype=jnp.int32) * block
    block_expert = jnp.minimum(jnp.searchsorted(padded_ends, block_start, side="right"),
                               num_experts - 1).astype(jnp.int32)
    return BlockLayout(destination=destination, block_expert=block_expert,
                       num_blocks=num_blocks, block=block)
