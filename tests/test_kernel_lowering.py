"""The kernels lower for TPU (Mosaic) and GPU (Triton) from this cpu-only machine.

What this proves and what it does not: ``.lower(lowering_platforms=...)`` runs the
Pallas -> Mosaic and Pallas -> Triton lowering in Python, which rejects unsupported
block shapes, primitives and memory spaces. Compiling the Mosaic/Triton modules into
machine code needs the TPU/GPU plugin and happens only on such hardware, so layout or
register-pressure failures can still surface there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.grouped_matmul import grouped_matmul
from pallas_kernels.indexer_scores import indexer_scores
from pallas_kernels.sparse_attention import sparse_topk_attention

PLATFORMS = {"tpu": ("tpu", "tpu_custom_call"), "gpu": ("cuda", "triton")}


def lowered_text(fn, *shapes, backend: str) -> str:
    platform, _ = PLATFORMS[backend]
    return jax.jit(fn).trace(*shapes).lower(lowering_platforms=(platform,)).as_text()


def sds(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_grouped_matmul_lowers(backend, dtype):
    # GLM-5 expert up-projection, scaled down: hidden 6144 -> 1024, moe_intermediate 2048 -> 512.
    shapes = (sds((2048, 1024), dtype), sds((8, 1024, 512), dtype), sds((32,), jnp.int32),
              sds((), jnp.int32))

    def loss(lhs, rhs, sizes, offset):
        out = grouped_matmul(lhs, rhs, sizes, group_offset=offset, backend=backend,
                             interpret=False)
        return jnp.sum(out)

    text = lowered_text(jax.grad(loss, argnums=(0, 1)), *shapes, backend=backend)
    assert text.count(PLATFORMS[backend][1]) >= 2  # d_lhs and d_rhs kernels


@pytest.mark.parametrize("shared_kv", [True, False])
@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_sparse_attention_lowers(backend, shared_kv):
    # MLA absorbed form: d_qk = 512 latent + 64 rope, d_v = 512; or per-head 192 / 128.
    heads, (d_qk, d_v) = 16, ((576, 512) if shared_kv else (192, 128))
    kv_heads = 1 if shared_kv else heads
    shapes = (sds((1, 64, heads, d_qk), jnp.bfloat16), sds((1, 1024, kv_heads, d_qk), jnp.bfloat16),
              sds((1, 1024, kv_heads, d_v), jnp.bfloat16), sds((1, 64, 256), jnp.int32))

    def loss(q, k, v, idx):
        out, lse = sparse_topk_attention(q, k, v, idx, scale=0.1, backend=backend,
                                         interpret=False)
        return jnp.sum(out.astype(jnp.float32)) + jnp.sum(jnp.where(jnp.isinf(lse), 0.0, lse))

    text = lowered_text(jax.value_and_grad(loss, argnums=(0, 1, 2)), *shapes, backend=backend)
    assert text.count(PLATFORMS[backend][1]) >= 2  # forward and backward kernels


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_indexer_scores_lowers(backend):
    shapes = (sds((1, 512, 32, 128), jnp.bfloat16), sds((1, 2048, 128), jnp.bfloat16),
              sds((1, 512, 32), jnp.bfloat16), sds((), jnp.int32))
    fn = lambda q, k, w, offset: indexer_scores(q, k, w, q_offset=offset, backend=backend,
                                               interpret=False)
    assert PLATFORMS[backend][1] in lowered_text(fn, *shapes, backend=backend)
