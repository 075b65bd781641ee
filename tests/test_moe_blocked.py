"""moe_impl="blocked" (padded blocks of rows) and "dense" (every token through every expert,
weighted by its gates) against the ragged_dot reference: the layout on hand-made group sizes,
the routed experts' values and gradients, and the whole tiny model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm5_jax.config import get_preset
from glm5_jax.model import GLM5Model, init_variables
from glm5_jax.model.blocked_experts import block_layout
from glm5_jax.model.moe import RoutedExperts

# float32, same products summed in another order (WORKSPACE.md: 1e-5 for layout changes).
RTOL, ATOL = 1e-5, 1e-6


def test_layout_pads_each_run_to_whole_blocks():
    # 3 experts, runs of 5, 0 and 9 rows, then 2 rows of no expert (dropped slots), block 4.
    layout = block_layout(jnp.array([5, 0, 9]), num_rows=16, block=4)
    assert layout.num_blocks == -(-(16 + 3 * 3) // 4)  # 7
    expected = list(range(5)) + list(range(8, 17)) + [28, 28]  # expert 2 starts at block 2
    np.testing.assert_array_equal(layout.destination, expected)
    # blocks 0-1: expert 0 (5 rows padded to 8), 2-4: expert 2 (9 padded to 12), the rest spare.
    np.testing.assert_array_equal(layout.block_expert[:5], [0, 0, 2, 2, 2])
    rows = jnp.arange(16 * 2, dtype=jnp.float32).reshape(16, 2) + 1
    blocks = layout.to_blocks(rows)
    assert blocks.shape == (7, 4, 2)
    assert float(jnp.sum(blocks)) == float(jnp.sum(rows[:14]))  # dropped rows are not placed
    back = layout.from_blocks(blocks)
    np.testing.assert_array_equal(back[:14], rows[:14])
    np.testing.assert_array_equal(back[14:], 0)


@pytest.mark.parametrize("impl", ["blocked", "dense"])
@pytest.mark.parametrize("seed, drop", [(0, False), (1, True)])
def test_routed_experts_match_ragged_dot_values_and_gradients(seed, drop, impl):
    config = get_preset("tiny")
    tokens, k, e = 40, config.num_experts_per_tok, config.n_routed_experts
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(tokens, config.hidden_size)), jnp.float32)
    weights = jnp.asarray(rng.uniform(size=(tokens, k)), jnp.float32)
    ids = rng.integers(0, e - 2, (tokens, k))  # experts e-2 and e-1 get no rows: empty runs
    if drop:
        ids[::3, -1] = e  # dynamic routing's dropped slots
    ids = jnp.asarray(ids, jnp.int32)
    reference = RoutedExperts(config)
    blocked = RoutedExperts(config.replace(moe_impl=impl))
    params = reference.init(jax.random.PRNGKey(seed), x, weights, ids)

    def loss(module, p, x, w):
        out = module.apply(p, x, w, ids)[0]
        return jnp.sum(out * jnp.cos(out)), out

    (_, want), want_grads = jax.value_and_grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2),
                                               has_aux=True)(params, x, weights)
    (_, got), got_grads = jax.value_and_grad(lambda *a: loss(blocked, *a), argnums=(0, 1, 2),
                                             has_aux=True)(params, x, weights)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
    assert float(jnp.max(jnp.abs(want))) > 0


@pytest.mark.parametrize("impl", ["blocked", "dense"])
def test_tiny_model_logits_match(impl):
    config = get_preset("tiny")
    ids = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 40)), jnp.int32)
    variables = init_variables(GLM5Model(config), jax.random.PRNGKey(0))
    want = jax.jit(GLM5Model(config).apply)(variables, ids)
    got = jax.jit(GLM5Model(config.replace(moe_impl=impl)).apply)(variables, ids)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # 5 layers + head: logits ~1, f32
