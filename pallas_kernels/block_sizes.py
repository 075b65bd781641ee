"""Default block sizes per backend, in one place so they are tuned here, not in kernels.

Why: the right tile depends on the memory hierarchy (TPU VMEM with 128-lane tiles, GPU
shared memory with Triton's power-of-two blocks, the cpu interpreter where each grid
step is a slow Python-free loop iteration and bigger blocks simply run faster). Every
kernel takes its block sizes as arguments; ``None`` means "take the default below".

The TPU and GPU numbers are starting points chosen from the usual tile shapes
(megablox's 128-multiples, Triton's 64/128 tiles) and have not been tuned on hardware;
BENCHMARKS.md says which were measured.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GroupedMatmulBlocks:
    block_m: int  # rows of the sorted token matrix per tile
    block_k: int  # contraction (hidden) per step
    block_n: int  # output columns per tile


@dataclasses.dataclass(frozen=True)
class SparseAttentionBlocks:
    block_k: int  # selected keys gathered and scored per inner step
    block_q: int = 1  # query tokens per grid step (the TPU formulation; GPU runs one)


@dataclasses.dataclass(frozen=True)
class IndexerBlocks:
    block_q: int  # query tokens per tile
    block_k: int  # key tokens per tile


GROUPED_MATMUL = {
    "tpu": GroupedMatmulBlocks(block_m=128, block_k=512, block_n=512),
    "gpu": GroupedMatmulBlocks(block_m=64, block_k=32, block_n=128),
    "cpu": GroupedMatmulBlocks(block_m=128, block_k=128, block_n=128),
}

SPARSE_ATTENTION = {
    # libtpu: 4 x 128 fits scoped VMEM at GLM-5's dims (576/512-wide rows, one per tile,
    # double-buffered); 8 x 128 does not (tests/test_kernel_tpu_compile.py compiles 4 x 128).
    "tpu": SparseAttentionBlocks(block_k=128, block_q=4),
    "gpu": SparseAttentionBlocks(block_k=64),
    "cpu": SparseAttentionBlocks(block_k=128, block_q=8),
}

INDEXER = {
    "tpu": IndexerBlocks(block_q=128, block_k=512),
    "gpu": IndexerBlocks(block_q=64, block_k=64),
    "cpu": IndexerBlocks(block_q=128, block_k=256),
}


def grouped_matmul_blocks(backend: str) -> GroupedMatmulBlocks:
    return GROUPED_MATMUL[backend]


def sparse_attention_blocks(backend: str) -> SparseAttentionBlocks:
    return SPARSE_ATTENTION[backend]


def indexer_blocks(backend: str) -> IndexerBlocks:
    return INDEXER[backend]
