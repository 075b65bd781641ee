"""The train step's numbers against computations that do not go through it: the MTP term in the
objective and its gradients, gradient accumulation over micro-batches of unequal token counts
against one batch, and the dense attention stage against a dense forward.

Every step here runs with an "optimizer" that records the gradient as its state and updates
nothing, so the gradient the step computed is read back exactly (Adam's first update is
~lr * sign(g): a scale error in g would not show in the parameters).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from hf_reference import relative_error

from glm5_jax.config import tiny
from glm5_jax.model import GLM5Model
from glm5_jax.train.experiment import DENSE, SPARSE, load_experiment
from glm5_jax.train.testing import REPO
from glm5_jax.train.train_state import init_train_state
from glm5_jax.train.train_step import make_train_step

VOCAB, SEQ, BATCH = 320, 32, 4
# float32, the same sums in another order or split over micro-batches (WORKSPACE.md: 1e-5).
RTOL = 1e-5
# initializer_range 0.1 (not 0.02): attention is far from uniform, so sparse (top-16 of up to
# 32 keys) and dense attention give clearly different losses.
BASE = tiny().replace(vocab_size=VOCAB, initializer_range=0.1, num_mtp_layers=0)
# Dense prefix layer with its own indexer, then an MoE layer that reuses its selection.
MOE_MODEL = BASE.replace(num_hidden_layers=2, first_k_dense_replace=1,
                         indexer_types=("full", "shared"), moe_impl="blocked")
# No MoE: these tests are about attention and MTP, and dense MLPs compile fast.
DENSE_MLP_MODEL = BASE.replace(num_hidden_layers=2, first_k_dense_replace=2,
                               indexer_types=("full", "shared"))
MTP_MODEL = BASE.replace(num_hidden_layers=1, first_k_dense_replace=1, num_mtp_layers=1)
assert MTP_MODEL.mtp_num_steps == 2 and SEQ > MOE_MODEL.index_topk  # sparse in stage "sparse"


def _gradient_recorder() -> optax.GradientTransformation:
    """Applies no update; its state after a step is that step's gradient."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def _packed_batch(documents: list[list[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """One row per entry of ``documents`` (lengths of the documents packed into it, 0 = padding
    after them): segment ids 1, 2, ..., positions restarting per document, loss on real tokens."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, VOCAB, (len(documents), SEQ + 1))
    segment_ids = np.zeros((len(documents), SEQ), np.int32)
    positions = np.zeros((len(documents), SEQ), np.int32)
    for row, lengths in enumerate(documents):
        start = 0
        for number, length in enumerate(lengths, 1):
            segment_ids[row, start:start + length] = number
            positions[row, start:start + length] = np.arange(length)
            start += length
        assert start <= SEQ
    return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
            "segment_ids": segment_ids, "positions": positions,
            "loss_mask": (segment_ids > 0).astype(np.float32)}


def _one_step(model_config, stage: str, batch: dict, **fields):
    """(initial params, gradient, metrics, routing before, routing after) of one train step."""
    config = load_experiment(REPO / "experiments" / "tiny.py", seq_len=SEQ, batch_size=BATCH,
                             **fields)
    optimizer = _gradient_recorder()
    state = jax.jit(lambda: init_train_state(GLM5Model(model_config), optimizer, 0))()
    step = jax.jit(make_train_step(model_config, config, optimizer,
                                   optax.constant_schedule(0.0), stage))
    new_state, metrics = step(state, batch)
    assert bool(metrics["step_applied"])
    return (jax.device_get(state.params), jax.device_get(new_state.opt_state),
            {k: float(v) for k, v in jax.device_get(metrics).items()},
            jax.device_get(state.routing), jax.device_get(new_state.routing))


def _mean_nll(logits, targets, weights):
    """Written out here, not taken from train/losses.py: sum of weighted -log p / sum of weights."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * weights) / jnp.sum(weights)


def _mtp_targets_and_weights(batch: dict, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """[steps, b, s]: MTP step j at position t predicts targets[t + j + 1], counted when both
    positions are real tokens of the same document."""
    targets, mask, segments = batch["targets"], batch["loss_mask"], batch["segment_ids"]
    step_targets = np.zeros((steps,) + targets.shape, np.int32)
    weights = np.zeros((steps,) + targets.shape, np.float32)
    for j in range(steps):
        shift = j + 1
        step_targets[j, :, :-shift] = targets[:, shift:]
        weights[j, :, :-shift] = (mask[:, :-shift] * mask[:, shift:]
                                  * (segments[:, :-shift] == segments[:, shift:]))
    return step_targets, weights


def _assert_gradients_match(got: dict, want: dict, skip=lambda path: False) -> int:
    """Leaf by leaf, relative to the leaf's largest entry; returns how many leaves were compared."""
    got, want = traverse_util.flatten_dict(got), traverse_util.flatten_dict(want)
    assert got.keys() == want.keys()
    compared = 0
    for path in got:
        if skip(path):
            continue
        error = relative_error(got[path], want[path])
        assert error <= RTOL, f"{'/'.join(path)}: relative error {error:.2e}"
        compared += 1
    return compared


@pytest.mark.parametrize("accum", [1, 2])
def test_step_objective_includes_the_weighted_mtp_loss(accum):
    """Loss metrics and gradients of a model with MTP (2 steps) against the objective written out
    here: CE + mtp_loss_weight * mean over steps of each step's CE (+ the indexer KL, whose
    gradient reaches only the indexers, which are left out of the comparison). In 2
    micro-batches (rows i and i + 2, of unequal token and MTP-position counts) as in one."""
    batch = _packed_batch([[20, 12], [9], [32], [5, 6]])
    weight = 0.3
    params, grads, metrics, _, _ = _one_step(MTP_MODEL, SPARSE, batch, mtp_loss_weight=weight,
                                             grad_accum_steps=accum)
    model = GLM5Model(MTP_MODEL)
    mtp_targets, mtp_weights = _mtp_targets_and_weights(batch, MTP_MODEL.mtp_num_steps)

    def objective(params):
        logits, mtp_logits = model.apply({"params": params}, batch["inputs"], batch["positions"],
                                         batch["segment_ids"], return_mtp=True)
        ce = _mean_nll(logits, batch["targets"], batch["loss_mask"])
        mtp = jnp.mean(jnp.stack([_mean_nll(mtp_logits[j], mtp_targets[j], mtp_weights[j])
                                  for j in range(MTP_MODEL.mtp_num_steps)]))
        return ce + weight * mtp, (ce, mtp)

    (_, (ce, mtp)), want = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
    np.testing.assert_allclose(metrics["ce_loss"], ce, rtol=RTOL)
    np.testing.assert_allclose(metrics["mtp_loss"], mtp, rtol=RTOL)
    assert metrics["mtp_loss"] > 1.0 and metrics["balance_loss"] == 0.0  # no MoE layer
    np.testing.assert_allclose(
        metrics["loss"], metrics["ce_loss"] + weight * metrics["mtp_loss"] + metrics["indexer_kl"],
        rtol=RTOL)
    compared = _assert_gradients_match(grads, jax.device_get(want),
                                       skip=lambda path: "indexer" in path)
    assert compared > 20
    mtp_grads = traverse_util.flatten_dict(grads["mtp_0"])
    for path, grad in mtp_grads.items():  # the MTP loss is the only one that reaches them
        if "indexer" not in path:
            assert np.any(grad), "/".join(path)


def test_grad_accumulation_equals_one_batch_with_unequal_micro_batches():
    """grad_accum_steps=2 against 1 on the same 4 rows; rows i and i+2 form a micro-batch, here
    64 and 20 loss tokens, so each micro-batch must weigh by its share of the batch's tokens.
    Loss terms (the balance loss, a mean over rows, included), gradient and routing-bias update
    agree at float32 accuracy."""
    batch = _packed_batch([[20, 12], [9], [30, 2], [5, 6]])
    micro_tokens = [batch["loss_mask"][i::2].sum() for i in range(2)]
    assert micro_tokens == [64, 20]
    results = {accum: _one_step(MOE_MODEL, SPARSE, batch, grad_accum_steps=accum,
                                routing_bias_update_rate=1e-3)
               for accum in (1, 2)}
    (_, want, whole, bias_before, bias_whole), (_, got, accumulated, _, bias_accumulated) = (
        results[1], results[2])
    for name in ("loss", "ce_loss", "balance_loss", "indexer_kl", "indexer_recall", "grad_norm",
                 "expert_load_max_over_mean"):
        np.testing.assert_allclose(accumulated[name], whole[name], rtol=RTOL, err_msg=name)
    assert whole["indexer_kl"] > 1e-3  # a KL well above float32 cancellation
    assert _assert_gradients_match(got, want) > 30
    # The bias rule sees the expert loads of the whole batch: same update, and it did move.
    # atol: a bias moves by rate (1e-3) x an O(1) load term; 1e-7 is float32 rounding of that
    # for biases that end near 0, where a relative bound has no scale.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-7),
                 bias_accumulated, bias_whole)
    assert not all(np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(bias_whole), jax.tree.leaves(bias_before)))


def test_dense_stage_is_dense_attention_over_every_causal_key():
    """Stage "dense" at seq_len 32 > index_topk 16: loss and gradients equal those of the same
    parameters in a model whose index_topk covers the sequence (every causal key of the
    document attended), and differ clearly from the sparse forward."""
    batch = _packed_batch([[20, 12], [32], [30, 2], [7, 25]])
    params, grads, metrics, _, _ = _one_step(DENSE_MLP_MODEL, DENSE, batch)

    def cross_entropy_of(model_config):
        def loss(params):
            logits = GLM5Model(model_config).apply({"params": params}, batch["inputs"],
                                                   batch["positions"], batch["segment_ids"])
            return _mean_nll(logits, batch["targets"], batch["loss_mask"])
        return jax.jit(jax.value_and_grad(loss))

    dense_ce, want = cross_entropy_of(DENSE_MLP_MODEL.replace(index_topk=SEQ))(params)
    sparse_ce, _ = cross_entropy_of(DENSE_MLP_MODEL)(params)
    assert abs(float(dense_ce) - float(sparse_ce)) > 100 * RTOL * float(dense_ce)
    np.testing.assert_allclose(metrics["ce_loss"], dense_ce, rtol=RTOL)
    np.testing.assert_allclose(metrics["loss"], metrics["ce_loss"] + metrics["indexer_kl"],
                               rtol=RTOL)
    # The dense stage trains everything on CE; the indexers on their (detached) KL only.
    assert _assert_gradients_match(grads, jax.device_get(want),
                                   skip=lambda path: "indexer" in path) > 20
