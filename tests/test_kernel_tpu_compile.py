"""The three Pallas kernels compile for TPU, forward and backward, at GLM-5's real dims.

``test_kernel_lowering`` runs Pallas -> Mosaic in Python; here libtpu's compiler (deviceless,
through ``glm5_jax.plan.topology``) takes the Mosaic modules all the way to a TPU executable,
so unsupported layouts, VMEM overflows and block shapes the hardware rejects fail here, on a
CPU host. Dims: MLA absorbed form (512 latent + 64 rope per key, 64 heads, top-2048 of 4096
keys), the indexer (32 heads x 128, 4096 keys), and one expert shard's grouped matmul
(8 local experts, hidden 6144 -> 2048).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import SingleDeviceSharding

from glm5_jax.plan.topology import parse_topology
from pallas_kernels.grouped_matmul import grouped_matmul
from pallas_kernels.indexer_scores import indexer_scores
from pallas_kernels.sparse_attention import sparse_topk_attention


@pytest.fixture(scope="module")
def chip():
    return SingleDeviceSharding(parse_topology("v5p-8").devices()[0])


def compiled_text(fn, chip, *shapes) -> str:
    args = [jax.ShapeDtypeStruct(s, d, sharding=chip) for s, d in shapes]
    return jax.jit(fn).lower(*args).compile().as_text()


def test_sparse_attention_compiles_for_tpu_at_glm5_dims(chip):
    def loss(q, k, v, idx):
        out, _ = sparse_topk_attention(q, k, v, idx, scale=0.1, backend="tpu", interpret=False)
        return jnp.sum(out.astype(jnp.float32))

    text = compiled_text(jax.grad(loss, argnums=(0, 1, 2)), chip,
                         ((1, 128, 64, 576), jnp.bfloat16), ((1, 4096, 1, 576), jnp.bfloat16),
                         ((1, 4096, 1, 512), jnp.bfloat16), ((1, 128, 2048), jnp.int32))
    assert text.count("custom-call") >= 2 and "tpu_custom_call" in text


def test_indexer_scores_compile_for_tpu_at_glm5_dims(chip):
    fn = lambda q, k, w: indexer_scores(q, k, w, backend="tpu", interpret=False)  # noqa: E731
    text = compiled_text(fn, chip, ((1, 4096, 32, 128), jnp.bfloat16),
                         ((1, 4096, 128), jnp.bfloat16), ((1, 4096, 32), jnp.bfloat16))
    assert "tpu_custom_call" in text


def test_grouped_matmul_compiles_for_tpu_at_glm5_dims(chip):
    def loss(lhs, rhs, sizes):
        out = grouped_matmul(lhs, rhs, sizes, backend="tpu", interpret=False)
        return jnp.sum(out)

    text = compiled_text(jax.grad(loss, argnums=(0, 1)), chip, ((8192, 6144), jnp.bfloat16),
                         ((8, 6144, 2048), jnp.bfloat16), ((8,), jnp.int32))
    assert text.count("tpu_custom_call") >= 2
