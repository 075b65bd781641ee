"""The model on an 8-device simulated mesh equals the single-device model (forward and grads)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import glm5_jax
from glm5_jax import sharding
from glm5_jax.model import logical_partition_specs
from hf_reference import relative_error

RTOL = 1e-5  # float32; only the reduction order differs between layouts

# Each mesh costs one SPMD compile of forward+backward (~1 min of CPU): two shapes that together
# exercise every axis (data, fsdp, expert, tensor), expert parallelism in both.
MESHES = ["data=2,expert=2,tensor=2", "fsdp=4,expert=2"]


def loss_fn(model, variables, params, ids):
    logits, mtp_logits = model.apply({**variables, "params": params}, ids, return_mtp=True)
    targets = jnp.roll(ids, -1, axis=1)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    main = -jnp.mean(jnp.take_along_axis(logp, targets[:, :-1, None], -1))
    mtp_logp = jax.nn.log_softmax(mtp_logits[0, :, :-2].astype(jnp.float32))
    mtp = -jnp.mean(jnp.take_along_axis(mtp_logp, jnp.roll(ids, -2, axis=1)[:, :-2, None], -1))
    return main + 0.3 * mtp


@pytest.fixture(scope="module")
def setup():
    assert jax.device_count() == 8, "tests/conftest.py must set 8 simulated CPU devices"
    config = glm5_jax.get_preset("tiny")  # index_topk=16 < seq 24: sparse attention is active
    model = glm5_jax.GLM5Model(config)
    variables = glm5_jax.init_variables(model, jax.random.PRNGKey(0))
    ids = jnp.asarray(np.random.RandomState(0).randint(0, config.vocab_size, (8, 24)), jnp.int32)
    grad_fn = jax.jit(jax.value_and_grad(lambda p, v, x: loss_fn(model, v, p, x)))
    reference = grad_fn(variables["params"], variables, ids)
    return model, variables, ids, reference


@pytest.mark.parametrize("mesh_spec", MESHES)
def test_sharded_forward_and_gradients_equal_single_device(setup, mesh_spec):
    model, variables, ids, (ref_loss, ref_grads) = setup
    mesh = sharding.make_mesh(mesh_spec)
    specs = logical_partition_specs(model)
    var_shardings = sharding.logical_shardings(mesh, specs)
    with sharding.activate(mesh):
        placed = jax.device_put(variables, var_shardings)
        ids_placed = jax.device_put(ids, sharding.batch_sharding(mesh))
        grad_fn = jax.jit(
            jax.value_and_grad(lambda p, v, x: loss_fn(model, v, p, x)),
            in_shardings=(var_shardings["params"], var_shardings, sharding.batch_sharding(mesh)),
            out_shardings=(sharding.replicated(mesh), var_shardings["params"]),
        )
        loss, grads = grad_fn(placed["params"], placed, ids_placed)
    # The expert weights really are split over the expert axis (not silently replicated).
    expert_w = grads["moe_layers"]["block"]["layer_0"]["mlp"]["experts"]["wi_gate"]
    expert_axis = dict(zip(mesh.axis_names, mesh.devices.shape))["expert"]
    assert expert_w.sharding.shard_shape(expert_w.shape)[1] == expert_w.shape[1] // expert_axis
    assert relative_error(loss, ref_loss) <= RTOL
    for path, (g, r) in zip(jax.tree_util.tree_leaves_with_path(grads),
                            zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads))):
        assert relative_error(g, r) <= RTOL, jax.tree_util.keystr(path[0])


def test_mesh_spec_errors_are_clear():
    with pytest.raises(ValueError, match="product of the axis sizes"):
        sharding.make_mesh("fsdp=3")
    with pytest.raises(ValueError, match="unknown"):
        sharding.make_mesh("pipeline=8")


def test_init_with_a_mesh_creates_each_variable_in_its_sharding(setup):
    """Same values as the one-device init, but laid out on the mesh from the start."""
    model, variables, _, _ = setup
    mesh = sharding.make_mesh("fsdp=2,expert=4")
    placed = glm5_jax.init_variables(model, jax.random.PRNGKey(0), mesh=mesh)
    want = sharding.logical_shardings(mesh, logical_partition_specs(model))
    experts = placed["params"]["moe_layers"]["block"]["layer_0"]["mlp"]["experts"]["wi_gate"]
    assert experts.sharding.shard_shape(experts.shape)[1] == experts.shape[1] // 4  # 1 of 4 expert shards
    for (path, got), spec, ref in zip(jax.tree_util.tree_leaves_with_path(placed),
                                      jax.tree_util.tree_leaves(want),
                                      jax.tree_util.tree_leaves(variables)):
        assert got.sharding.is_equivalent_to(spec, got.ndim), jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref), err_msg=jax.tree_util.keystr(path))


def test_shardings_keep_only_the_mesh_axes_that_divide_each_dim():
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = sharding.make_mesh("fsdp=2,expert=4")
    wanted = NamedSharding(mesh, PartitionSpec(("fsdp", "expert"), None))
    assert sharding.fit_to_shape(wanted, (16, 3)).spec == PartitionSpec(("fsdp", "expert"), None)
    assert sharding.fit_to_shape(wanted, (4, 3)).spec == PartitionSpec("fsdp", None)
    assert sharding.fit_to_shape(wanted, (3, 3)).spec == PartitionSpec(None, None)
    experts = NamedSharding(mesh, PartitionSpec("expert", "fsdp"))
    assert sharding.fit_to_shape(experts, (6, 4)).spec == PartitionSpec(None, "fsdp")
