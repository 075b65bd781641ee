"""Weights at scale: save_hf splits into indexed files, load_hf streams each device's shard
into the training shardings (8 simulated devices), and FP8 block-scaled weights dequantise."""

from __future__ import annotations

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest

import glm5_jax
from glm5_jax import sharding
from glm5_jax.convert.hf_checkpoint import FP8_BLOCK, dequantize_blocks
from glm5_jax.model import logical_partition_specs


@pytest.fixture(scope="module")
def tiny_model():
    model = glm5_jax.GLM5Model(glm5_jax.get_preset("tiny"))
    return model, glm5_jax.init_variables(model, jax.random.PRNGKey(0))


def test_sharded_files_with_an_index_load_onto_a_mesh_exactly(tiny_model, tmp_path):
    model, variables = tiny_model
    glm5_jax.save_hf(model, variables, str(tmp_path), max_shard_bytes=64 * 1024)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and files == sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert all(os.path.getsize(tmp_path / f) <= 64 * 1024 + 1024 * 1024 for f in files)  # one tensor may overflow

    mesh = sharding.make_mesh("fsdp=2,expert=4")
    _, loaded = glm5_jax.load_hf(str(tmp_path), mesh=mesh)
    want = sharding.logical_shardings(mesh, logical_partition_specs(model))
    for (path, got), spec, ref in zip(jax.tree_util.tree_leaves_with_path(loaded),
                                      jax.tree_util.tree_leaves(want),
                                      jax.tree_util.tree_leaves(variables)):
        assert got.sharding.is_equivalent_to(spec, got.ndim), jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref), err_msg=jax.tree_util.keystr(path))


def test_a_missing_tensor_is_named_before_anything_loads(tiny_model, tmp_path):
    from safetensors.numpy import load_file, save_file

    model, variables = tiny_model
    glm5_jax.save_hf(model, variables, str(tmp_path), max_shard_bytes=64 * 1024)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    holder = tmp_path / index["weight_map"]["lm_head.weight"]
    tensors = load_file(holder)
    del tensors["lm_head.weight"]
    save_file(tensors, holder, metadata={"format": "pt"})
    with pytest.raises(KeyError, match="lm_head.weight"):
        glm5_jax.load_hf(str(tmp_path))


def test_fp8_checkpoint_tensors_are_read_dequantised(tmp_path):
    import jax.numpy as jnp
    from safetensors.flax import save_file

    from glm5_jax.convert.hf_checkpoint import _Reader

    rng = np.random.RandomState(1)
    weight = rng.uniform(-4, 4, (FP8_BLOCK * 2, FP8_BLOCK)).astype(ml_dtypes.float8_e4m3fn)
    scales = np.asarray([[0.5], [3.0]], np.float32)
    save_file({"w": jnp.asarray(weight), "w_scale_inv": jnp.asarray(scales)},
              str(tmp_path / "model.safetensors"))
    got = _Reader(str(tmp_path)).read("w")
    np.testing.assert_array_equal(got[:FP8_BLOCK], weight[:FP8_BLOCK].astype(np.float32) * 0.5)
    np.testing.assert_array_equal(got[FP8_BLOCK:], weight[FP8_BLOCK:].astype(np.float32) * 3.0)


def test_fp8_block_scaled_weights_dequantise():
    rng = np.random.RandomState(0)
    rows, cols = FP8_BLOCK + 40, 2 * FP8_BLOCK + 7  # partial blocks at both edges
    scales = rng.uniform(0.5, 2.0, (2, 3)).astype(np.float32)
    quantised = rng.uniform(-4, 4, (rows, cols)).astype(ml_dtypes.float8_e4m3fn)
    got = dequantize_blocks(quantised.astype(np.float32), scales)
    for i, j in [(0, 0), (FP8_BLOCK, FP8_BLOCK), (rows - 1, cols - 1), (5, 2 * FP8_BLOCK + 1)]:
        assert got[i, j] == np.float32(quantised[i, j]) * scales[i // FP8_BLOCK, j // FP8_BLOCK]
    with pytest.raises(ValueError, match="do not tile"):
        dequantize_blocks(quantised.astype(np.float32), scales[:1])
