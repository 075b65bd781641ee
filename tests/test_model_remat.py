"""Rematerialisation changes memory, never numbers: the train objective (CE, MTP, balance
loss and the indexer KL, whose inputs are captured inside the rematerialised scan) and
every gradient leaf equal the stored-activation run at float32 accuracy."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import traverse_util
from hf_reference import relative_error
from test_train_step_numbers import _packed_batch

from glm5_jax.config import ConfigError, tiny
from glm5_jax.model import GLM5Model
from glm5_jax.model.variables import init_variables
from glm5_jax.train.experiment import SPARSE, load_experiment
from glm5_jax.train.testing import REPO
from glm5_jax.train.train_step import make_loss_fn

# float32: the same computation recomputed (XLA may fuse it differently): WORKSPACE.md 1e-5.
RTOL = 1e-5
MODEL = tiny().replace(vocab_size=320, num_hidden_layers=3, first_k_dense_replace=1,
                       indexer_types=("full", "shared", "full"), moe_impl="blocked",
                       initializer_range=0.1)


@functools.cache
def objective_and_grads(policy: str):
    """(objective, loss terms, gradients, FLOPs of the compiled program) under ``policy``."""
    model_config = MODEL.replace(remat_policy=policy)
    config = load_experiment(REPO / "experiments" / "tiny.py", seq_len=32, batch_size=4)
    loss_fn = make_loss_fn(model_config, config, SPARSE)
    variables = init_variables(GLM5Model(MODEL), jax.random.key(0), seq_len=32)
    batch = _packed_batch([[20, 12], [9], [30, 2], [5, 6]])
    args = (variables["params"], variables["routing"], batch, 1.0, jax.random.key(1))
    compiled = jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(*args).compile()
    (objective, aux), grads = compiled(*args)
    return objective, aux["terms"], grads, compiled.cost_analysis()["flops"]


@pytest.mark.parametrize("policy", ["full", "save_dots"])
def test_remat_gives_the_same_objective_and_gradients(policy):
    objective, terms, grads, _ = objective_and_grads(policy)
    want_objective, want_terms, want_grads, _ = objective_and_grads("none")
    assert float(want_terms["indexer_kl"]) > 1e-3 and float(want_terms["mtp_loss"]) > 0
    for name, value in want_terms.items():
        np.testing.assert_allclose(terms[name], value, rtol=RTOL, err_msg=name)
    np.testing.assert_allclose(objective, want_objective, rtol=RTOL)
    flat, want_flat = (traverse_util.flatten_dict(g) for g in (grads, want_grads))
    assert flat.keys() == want_flat.keys()
    errors = {"/".join(path): relative_error(flat[path], want_flat[path]) for path in flat}
    assert max(errors.values()) <= RTOL, sorted(errors.items(), key=lambda kv: -kv[1])[:5]


def test_remat_changes_the_compiled_program():
    """The policy reaches the scan: full remat recomputes the forward inside the backward,
    so its program holds more FLOPs than the stored-activation one (equal numbers alone
    would not show that remat happened at all)."""
    stored, recomputed = objective_and_grads("none")[3], objective_and_grads("full")[3]
    assert recomputed > 1.1 * stored, (stored, recomputed)


def test_unknown_remat_policy_is_named():
    with pytest.raises(ConfigError, match="remat_policy"):
        MODEL.replace(remat_policy="sometimes")
