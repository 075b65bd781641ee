"""``relative_error`` (tests/hf_reference.py), the parity tests' yardstick, catches what it claims."""

import numpy as np
import pytest
from hf_reference import leaf_relative_errors, relative_error

RTOL = 1e-5  # the float32 tolerance of its callers (test_sharded_model, test_pallas_model)


def gradient_like_tree(rng):
    """Leaves at the scales of the tiny model's gradients: 1e-1 (embeddings) down to 5e-7
    (MTP q_a_layernorm), and an all-zero one (the indexer under the LM loss alone)."""
    return {
        "embed_tokens": (0.1 * rng.standard_normal((64, 16))).astype(np.float32),
        "mtp": {"q_a_layernorm": (5e-7 * rng.standard_normal(32)).astype(np.float32)},
        "indexer": {"wk": np.zeros((16, 8), np.float32)},
    }


def float32_noise(tree, rng):
    """Each leaf perturbed by a few float32 roundings at its own scale."""
    return {k: float32_noise(v, rng) if isinstance(v, dict)
            else (v + 4e-7 * np.abs(v).max() * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in tree.items()}


def test_small_leaf_is_checked_at_its_own_scale():
    rng = np.random.default_rng(0)
    expected = gradient_like_tree(rng)
    assert relative_error(float32_noise(expected, rng), expected) <= RTOL
    broken = float32_noise(expected, rng)
    broken["mtp"]["q_a_layernorm"] = np.zeros(32, np.float32)  # a gradient that never arrived
    errors = leaf_relative_errors(broken, expected)
    assert errors["['mtp']['q_a_layernorm']"] == 1.0 and relative_error(broken, expected) == 1.0
    # One scale for the whole tree (the largest leaf's) would have passed it:
    flat = lambda tree: np.concatenate([tree["embed_tokens"].ravel(),
                                        tree["mtp"]["q_a_layernorm"], tree["indexer"]["wk"].ravel()])
    assert np.max(np.abs(flat(broken) - flat(expected))) / np.max(np.abs(flat(expected))) <= RTOL


def test_zero_reference_must_come_out_zero():
    zero = np.zeros(8, np.float32)
    assert relative_error(zero, zero) == 0.0
    assert relative_error(np.full(8, 1e-30, np.float32), zero) > 1.0


def test_shapes_and_structures_must_match():
    with pytest.raises(AssertionError, match="shape"):
        relative_error(np.ones((2, 3)), np.ones(3))  # would broadcast silently
    with pytest.raises(AssertionError, match="structure"):
        relative_error({"a": np.ones(2)}, {"a": np.ones(2), "b": np.ones(2)})
