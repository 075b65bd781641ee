"""The model with Pallas kernels (interpret mode on CPU) equals the XLA paths, forward and
gradients, on one device and expert/tensor/fsdp-parallel on the 8-device simulated mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import glm5_jax
from glm5_jax import sharding
from glm5_jax.model import logical_partition_specs
from hf_reference import relative_error

RTOL = 1e-5  # float32; kernels accumulate in f32 in another order


def loss_fn(model, variables, params, ids):
    logits = model.apply({**variables, "params": params}, ids)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], -1))


@pytest.fixture(scope="module")
def models():
    # Interpret-mode kernels compile slowly: two layers (dense + MoE, the second reusing the
    # first's top-k) cover every kernel; seq 24 > index_topk 16 so the sparse kernels run.
    config = glm5_jax.get_preset("tiny").replace(
        num_hidden_layers=2, first_k_dense_replace=1, indexer_types=("full", "shared"), num_mtp_layers=0)
    xla = glm5_jax.GLM5Model(config)
    pallas = glm5_jax.GLM5Model(config.replace(attention_impl="pallas", moe_impl="pallas"))
    variables = glm5_jax.init_variables(xla, jax.random.PRNGKey(1))
    ids = jnp.asarray(np.random.RandomState(1).randint(0, config.vocab_size, (4, 24)), jnp.int32)
    reference = jax.jit(jax.value_and_grad(lambda p, v, x: loss_fn(xla, v, p, x)))(
        variables["params"], variables, ids)
    return pallas, variables, ids, reference


def _assert_close(result, reference):
    loss, grads = result
    ref_loss, ref_grads = reference
    assert relative_error(loss, ref_loss) <= RTOL
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(ref_grads)):
        assert relative_error(g, r) <= RTOL, jax.tree_util.keystr(path)


def test_pallas_model_equals_xla_on_one_device(models):
    pallas, variables, ids, reference = models
    result = jax.jit(jax.value_and_grad(lambda p, v, x: loss_fn(pallas, v, p, x)))(
        variables["params"], variables, ids)
    _assert_close(result, reference)


def test_pallas_model_equals_xla_on_expert_parallel_mesh(models):
    pallas, variables, ids, reference = models
    mesh = sharding.make_mesh("fsdp=2,expert=2,tensor=2")
    shardings = sharding.logical_shardings(mesh, logical_partition_specs(pallas))
    with sharding.activate(mesh):
        placed = jax.device_put(variables, shardings)
        step = jax.jit(jax.value_and_grad(lambda p, v, x: loss_fn(pallas, v, p, x)),
                       in_shardings=(shardings["params"], shardings, sharding.batch_sharding(mesh)))
        text = step.lower(placed["params"], placed, ids).as_text()
        assert "shard_map" in text or "sdy.manual_computation" in text, "kernels must run per shard"
        result = step(placed["params"], placed, jax.device_put(ids, sharding.batch_sharding(mesh)))
    _assert_close(result, reference)
