"""Muon with Muon Split: which parameters Muon owns, and per-head orthogonalisation.

The check of "orthogonalised per head": give one MLA up-projection a gradient whose heads
differ in scale by 10^4. Muon's update for each head's [latent, head_dim] slice must then
have all singular values near one common value (Newton-Schulz leaves them in about
[0.5, 1.5] of it), whatever the head's gradient scale. Orthogonalising the whole
[latent, heads * head_dim] matrix instead (the ablation) leaves the small heads' spectra far
below the large head's.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec as P
from optax.contrib import MuonDimensionNumbers

from glm5_jax.config import tiny
from glm5_jax.model import GLM5Model, logical_partition_specs
from glm5_jax.train.experiment import load_experiment
from glm5_jax.train.muon_split import muon_dimension_numbers
from glm5_jax.train.optimizer import make_optimizer

REPO = Path(__file__).resolve().parents[1]
HEAD_SCALES = (100.0, 1.0, 0.01, 1.0)
LATENT, HEADS, HEAD_DIM = 32, 4, 24


def _experiment_config(**changes):
    return load_experiment(REPO / "experiments" / "tiny.py", **changes)


def test_dimension_numbers_of_the_tiny_model():
    specs = logical_partition_specs(GLM5Model(tiny()))["params"]
    dims = traverse_util.flatten_dict(muon_dimension_numbers(specs))
    by_name = {"/".join(path): d for path, d in dims.items()}
    # Per-head split: latent in, head_dim out; layers and heads are batch axes.
    for name in ("moe_layers/block/layer_0/self_attn/q_b_proj/kernel",
                 "moe_layers/block/layer_0/self_attn/kv_b_proj/kernel",
                 "dense_layers/block/layer_0/self_attn/indexer/wq_b/kernel"):
        assert by_name[name] == MuonDimensionNumbers(reduction_axis=1, output_axis=3), name
    assert by_name["mtp_0/layer/self_attn/q_b_proj/kernel"] == MuonDimensionNumbers(0, 2)
    # o_proj is one [heads * v, hidden] matrix; experts are one matrix each.
    assert by_name["moe_layers/block/layer_0/self_attn/o_proj/kernel"] == MuonDimensionNumbers((1, 2), 3)
    assert by_name["moe_layers/block/layer_0/mlp/experts/wi_gate"] == MuonDimensionNumbers((2,), 3)
    assert by_name["mtp_0/eh_proj/kernel"] == MuonDimensionNumbers((0,), 1)
    # AdamW keeps the embedding, head, norms and the router gate.
    for name in ("embed_tokens", "lm_head/kernel", "norm/weight",
                 "moe_layers/block/layer_0/mlp/gate/kernel",
                 "dense_layers/block/layer_0/self_attn/indexer/k_norm/bias"):
        assert by_name[name] is None, name


def _params_and_grads():
    """A scanned q_b_proj (2 layers) with head-scaled gradients, plus AdamW-owned leaves."""
    specs = {"q_b_proj": P("layers", "q_lora", "heads", "head_dim"),
             "norm": P("layers", "norm"), "embed_tokens": P("vocab", "embed")}
    shapes = {"q_b_proj": (2, LATENT, HEADS, HEAD_DIM), "norm": (2, 64), "embed_tokens": (50, 64)}
    keys = dict(zip(shapes, jax.random.split(jax.random.PRNGKey(0), len(shapes))))
    grads = {name: jax.random.normal(keys[name], shape) for name, shape in shapes.items()}
    grads["q_b_proj"] = grads["q_b_proj"] * jnp.asarray(HEAD_SCALES)[None, None, :, None]
    params = {name: jnp.zeros(shape) for name, shape in shapes.items()}
    return specs, params, grads


def _first_update(split_heads: bool):
    config = _experiment_config(optimizer="muon", muon_split_heads=split_heads, weight_decay=0.0,
                                warmup_steps=0, max_grad_norm=1e9, learning_rate=1.0,
                                min_learning_rate_ratio=1.0)
    specs, params, grads = _params_and_grads()
    optimizer, _ = make_optimizer(config, specs)
    updates, _ = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
    return config, jax.device_get(updates)


def _head_singular_values(update: np.ndarray) -> np.ndarray:
    """[layers, heads, min(latent, head_dim)] singular values of each head's slice."""
    return np.stack([[np.linalg.svd(update[layer, :, head, :], compute_uv=False)
                      for head in range(HEADS)] for layer in range(update.shape[0])])


def test_muon_split_orthogonalises_each_head():
    config, updates = _first_update(split_heads=True)
    # optax scales by -lr; the RMS match multiplies by sqrt(max(fan_in, fan_out)) * rms.
    scale = np.sqrt(max(LATENT, HEAD_DIM)) * config.muon_consistent_rms
    singular = _head_singular_values(-updates["q_b_proj"]) / scale
    assert singular.shape == (2, HEADS, HEAD_DIM)
    assert np.all(singular > 0.5) and np.all(singular < 1.5), singular.round(3)
    # Every head gets the same spectrum regardless of its gradient's scale (10^4 apart).
    per_head_mean = singular.mean(axis=-1)
    np.testing.assert_allclose(per_head_mean, per_head_mean.mean(), rtol=0.1)


def test_whole_matrix_muon_starves_small_heads():
    _, updates = _first_update(split_heads=False)
    singular = _head_singular_values(-updates["q_b_proj"])
    small, large = singular[:, 2].max(), singular[:, 0].min()
    assert small < 0.1 * large, (small, large)


def test_adamw_owns_embedding_and_norms():
    _, updates = _first_update(split_heads=True)
    # Adam's first step is lr * g / (|g| + eps) = ~sign(g) per element (bias-corrected).
    for name in ("norm", "embed_tokens"):
        np.testing.assert_allclose(np.abs(updates[name]), 1.0, rtol=1e-3)


def test_unknown_optimizer_is_rejected():
    config = _experiment_config(optimizer="sgd")
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer(config, {"w": P("embed", "mlp")})


@pytest.mark.parametrize("shape,dims", [
    ((3, 4, 16, 8), MuonDimensionNumbers(reduction_axis=2, output_axis=3)),  # [layers, expert, d, f]
    ((3, 4, 8, 16), MuonDimensionNumbers(reduction_axis=2, output_axis=3)),  # wide, transposed inside
    ((2, 8, 4, 6), MuonDimensionNumbers(reduction_axis=1, output_axis=3)),  # per head: heads a batch axis
    ((2, 4, 6, 8), MuonDimensionNumbers(reduction_axis=(1, 2), output_axis=3)),  # o_proj: merged input
])
def test_batched_orthogonalisation_equals_optax(shape, dims):
    """Ours keeps batch axes apart (sharded stacks stay sharded); the maths is optax's."""
    from optax.contrib._muon import orthogonalize_via_newton_schulz

    from glm5_jax.train.muon import NS_COEFFS, orthogonalize

    x = jnp.asarray(np.random.RandomState(0).normal(size=shape), jnp.float32)
    coeffs = jnp.asarray(NS_COEFFS)
    want = orthogonalize_via_newton_schulz(x, coeffs, 5, "frobenius", 1e-8, dims)
    got = orthogonalize(x, dims, coeffs, 5, 1e-8)
    # float32 1e-5 relative to the matrix's scale: the iteration mixes every entry of a row.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_our_muon_equals_optax_muon_over_steps():
    from optax.contrib import scale_by_muon as optax_muon

    from glm5_jax.train.muon import scale_by_muon

    dims = {"experts": MuonDimensionNumbers(reduction_axis=2, output_axis=3),
            "dense": MuonDimensionNumbers(reduction_axis=0, output_axis=1)}
    rng = np.random.RandomState(1)
    params = {"experts": jnp.asarray(rng.normal(size=(2, 3, 8, 5)), jnp.float32),
              "dense": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)}
    ours, theirs = (make(beta=0.9, ns_steps=5, weight_dimension_numbers=lambda _: dims)
                    for make in (scale_by_muon, optax_muon))
    state_a, state_b = ours.init(params), theirs.init(params)
    for step in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        up_a, state_a = ours.update(grads, state_a)
        up_b, state_b = theirs.update(grads, state_b)
        for key in params:
            # Orthogonalised updates are O(1): float32 1e-5 absolute is 1e-5 of their scale.
            np.testing.assert_allclose(up_a[key], up_b[key], rtol=1e-5, atol=1e-5,
                                       err_msg=f"{key} step {step}")
    assert int(state_a.count) == int(state_b.count) == 3
