"""Expert parallelism on the 8-device simulated mesh equals the one-device MoE, forward and
backward; tokens travel by all-to-all (never an all-gather of every token); capacity drops
follow the documented rule; the ragged transport compiles for TPU."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm5_jax import sharding
from glm5_jax.model.expert_parallel import (
    receive_rows,
    routed_experts_sharded,
    routed_experts_single,
)
from hf_reference import relative_error

RTOL = 1e-5  # float32: only the summation order differs
N, K, D, F, E = 64, 3, 16, 8, 8  # tokens, slots, width, expert width, experts


def problem(seed=0, dropped=0.1, skew=False):
    rng = np.random.RandomState(seed)
    x = rng.normal(size=(N, D)).astype(np.float32)
    weights = rng.uniform(0.1, 1.0, size=(N, K)).astype(np.float32)
    if skew:  # most rows want expert 0: receive buffers overflow
        ids = np.where(rng.uniform(size=(N, K)) < 0.7, 0, rng.randint(0, E, (N, K)))
    else:
        ids = np.stack([rng.choice(E, K, replace=False) for _ in range(N)])
    ids = np.where(rng.uniform(size=(N, K)) < dropped, E, ids).astype(np.int32)  # dynamic routing's drops
    w = [rng.normal(size=s).astype(np.float32) * 0.3 for s in ((E, D, F), (E, D, F), (E, F, D))]
    return x, weights, ids, w


def loss(out):
    return jnp.sum(jnp.sin(out))  # non-linear, so every output row's gradient differs


def single(x, weights, ids, w, impl="ragged_dot"):
    fn = lambda x, weights, *w: loss(routed_experts_single(x, weights, ids, *w, impl))
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3, 4)))(x, weights, *w)


def sharded(mesh, x, weights, ids, w, impl="ragged_dot", capacity_factor=0.0):
    def fn(x, weights, ids, *w):
        out, load = routed_experts_sharded(x, weights, ids, *w, mesh=mesh, impl=impl,
                                           dispatch="padded", capacity_factor=capacity_factor)
        return loss(out), load

    grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 3, 4, 5), has_aux=True))
    with jax.set_mesh(mesh):
        return grad(x, weights, ids, *w), grad.lower(x, weights, ids, *w).compile().as_text()


@pytest.mark.parametrize("mesh_spec", ["expert=8", "fsdp=2,expert=4", "data=2,expert=2,tensor=2"])
def test_expert_parallel_equals_one_device_forward_and_backward(mesh_spec):
    x, weights, ids, w = problem()
    ref_loss, ref_grads = single(x, weights, ids, w)
    mesh = sharding.make_mesh(mesh_spec)
    ((out_loss, load), grads), hlo = sharded(mesh, x, weights, ids, w)
    assert relative_error(out_loss, ref_loss) <= RTOL
    for name, g, r in zip(("x", "weights", "wi_gate", "wi_up", "wo"), grads, ref_grads):
        assert relative_error(g, r) <= RTOL, name
    np.testing.assert_array_equal(load, np.bincount(ids.reshape(-1), minlength=E + 1)[:E])
    # Rows travel to their experts by all-to-all; no device ever gathers every token.
    assert "all-to-all" in hlo
    for line in hlo.splitlines():
        if "all-gather(" in line:
            assert f"[{N},{D}]" not in line.split("all-gather(")[0], line


def test_blocked_experts_are_expert_parallel_too():
    x, weights, ids, w = problem(seed=1)
    ref_loss, ref_grads = single(x, weights, ids, w, impl="blocked")
    ((out_loss, _), grads), _ = sharded(sharding.make_mesh("fsdp=2,expert=4"), x, weights, ids, w,
                                        impl="blocked")
    assert relative_error(out_loss, ref_loss) <= RTOL
    for g, r in zip(grads, ref_grads):
        assert relative_error(g, r) <= RTOL


def test_dense_experts_are_expert_parallel_too():
    """moe_impl="dense" on each device's received rows (rows of no expert: zero gates)."""
    x, weights, ids, w = problem(seed=2)
    ref_loss, ref_grads = single(x, weights, ids, w)
    ((out_loss, _), grads), _ = sharded(sharding.make_mesh("fsdp=2,expert=4"), x, weights, ids, w,
                                        impl="dense")
    assert relative_error(out_loss, ref_loss) <= RTOL
    for g, r in zip(grads, ref_grads):
        assert relative_error(g, r) <= RTOL


def expected_drops(ids, token_shards, shards, capacity):
    """The padded transport's rule, restated: per sending device and receiving expert shard,
    rows in (expert, token, slot) order beyond the first ``capacity`` are dropped."""
    ids = ids.copy()
    per_device = N // token_shards
    local = E // shards
    for device in range(token_shards):
        block = ids[device * per_device:(device + 1) * per_device]
        flat = block.reshape(-1)
        order = np.argsort(flat, kind="stable")
        seen = np.zeros(shards, int)
        for row in order:
            if flat[row] == E:
                continue
            dest = flat[row] // local
            if seen[dest] >= capacity:
                flat[row] = E
            seen[dest] += 1
        ids[device * per_device:(device + 1) * per_device] = flat.reshape(block.shape)
    return ids


def test_capacity_drops_exactly_the_rows_past_each_buffer():
    x, weights, ids, w = problem(seed=2, dropped=0.0, skew=True)
    mesh = sharding.make_mesh("fsdp=2,expert=4")
    factor = 1.0
    rows_per_device = N // 8 * K
    capacity = receive_rows(rows_per_device, 4, factor) // 4
    kept = expected_drops(ids, token_shards=8, shards=4, capacity=capacity)
    assert (kept == E).sum() > 0, "the skewed routing must overflow some buffer"
    ref_loss, ref_grads = single(x, weights, kept, w)
    ((out_loss, load), grads), _ = sharded(mesh, x, weights, ids, w, capacity_factor=factor)
    assert relative_error(out_loss, ref_loss) <= RTOL
    for g, r in zip(grads, ref_grads):
        assert relative_error(g, r) <= RTOL
    # The load counts what the router asked for (the balancing rule's input), drops included.
    np.testing.assert_array_equal(load, np.bincount(ids.reshape(-1), minlength=E + 1)[:E])


def test_tokens_that_do_not_divide_the_mesh_are_padded_not_refused():
    x, weights, ids, w = problem(seed=3)
    n = N - 5
    ref_loss, ref_grads = single(x[:n], weights[:n], ids[:n], w)
    ((out_loss, _), grads), _ = sharded(sharding.make_mesh("expert=8"), x[:n], weights[:n],
                                        ids[:n], w)
    assert relative_error(out_loss, ref_loss) <= RTOL
    for g, r in zip(grads, ref_grads):
        assert relative_error(g, r) <= RTOL


def test_ragged_transport_compiles_for_tpu_forward_and_backward():
    """ragged_all_to_all has no XLA:CPU lowering; libtpu's compiler (deviceless) takes it."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from glm5_jax.plan.topology import parse_topology

    devices = parse_topology("v5p-16").devices()  # 8 chips
    mesh = Mesh(np.asarray(devices).reshape(1, 2, 4, 1, 1), sharding.MESH_AXES)

    def fn(x, weights, ids, *w):
        out, load = routed_experts_sharded(x, weights, ids, *w, mesh=mesh, impl="ragged_dot",
                                           dispatch="ragged", capacity_factor=2.0)
        return loss(out), load

    rows = NamedSharding(mesh, P(("fsdp", "expert")))
    experts = NamedSharding(mesh, P("expert", "fsdp"))
    abstract = [jax.ShapeDtypeStruct(s, d, sharding=sh) for s, d, sh in (
        ((N, D), jnp.bfloat16, rows), ((N, K), jnp.float32, rows), ((N, K), jnp.int32, rows),
        ((E, D, F), jnp.bfloat16, experts), ((E, D, F), jnp.bfloat16, experts),
        ((E, F, D), jnp.bfloat16, experts))]
    grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 3, 4, 5), has_aux=True))
    with jax.set_mesh(mesh):
        hlo = grad.lower(*abstract).compile().as_text()
    # Forward: rows and ids out, results back; backward: the transposes of the row trips.
    assert hlo.count("ragged-all-to-all(") >= 4
    # The only all-gathers are the FSDP gathers of this device's experts (E/G x D x F each).
    gathered = [re.search(r"= \w+\[([\d,]*)\]", line).group(1) for line in hlo.splitlines()
                if "all-gather(" in line]
    assert gathered and all(math.prod(map(int, dims.split(","))) == E // 4 * D * F
                            for dims in gathered), gathered
