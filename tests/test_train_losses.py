"""Losses on packed rows, the learning-rate schedule and experiment-config checks (no model,
no compile of note)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm5_jax.train.experiment import (
    ExperimentConfigError,
    load_experiment,
    model_config_from,
    validate,
)
from glm5_jax.train.losses import (
    cross_entropy,
    mtp_cross_entropy,
    sequence_balance_loss,
)
from glm5_jax.train.schedule import warmup_cosine
from glm5_jax.train.testing import REPO

VOCAB = 7


def _one_hot_logits(tokens: np.ndarray) -> jnp.ndarray:
    """Logits that put ~all mass on ``tokens`` (cross entropy ~0 where they are the targets)."""
    return jnp.asarray(jax.nn.one_hot(tokens, VOCAB) * 30.0)


def test_cross_entropy_ignores_masked_positions():
    targets = np.array([[1, 2, 3, 4]])
    logits = _one_hot_logits(np.array([[1, 2, 0, 0]]))  # right on the first two only
    mask = np.array([[1.0, 1.0, 0.0, 0.0]])
    assert float(cross_entropy(logits, targets, mask)) < 1e-6
    assert float(cross_entropy(logits, targets, np.ones_like(mask))) > 10


def test_mtp_step_j_predicts_targets_shifted_by_j_plus_one_within_a_document():
    """A row packing two documents (positions 0-3 and 4-6) with arbitrary next-token targets."""
    targets = np.array([[1, 2, 3, 5, 5, 6, 0]])
    segments = np.array([[1, 1, 1, 1, 2, 2, 2]])
    mask = np.ones((1, 7), np.float32)
    # Step 0 at position t must predict targets[t + 1] (token t + 2): feed exactly that.
    shifted = np.concatenate([targets[:, 1:], np.zeros((1, 1), int)], axis=1)
    perfect = _one_hot_logits(shifted)[None]
    assert float(mtp_cross_entropy(perfect, targets, mask, segments)) < 1e-6
    # Predicting targets[t] instead (the main head's job) is wrong everywhere it counts.
    wrong = _one_hot_logits(targets)[None]
    assert float(mtp_cross_entropy(wrong, targets, mask, segments)) > 10
    # Positions whose shifted target lies in the next document or past the row do not count:
    # corrupting exactly those logits changes nothing.
    corrupted = np.array(perfect)
    corrupted[0, 0, [3, 6]] = 0.0
    assert float(mtp_cross_entropy(jnp.asarray(corrupted), targets, mask, segments)) < 1e-6


def test_balance_loss_is_one_when_balanced_and_larger_when_not():
    batch, seq, experts, k = 1, 8, 4, 1
    mask = np.ones((batch, seq), np.float32)
    uniform_scores = jnp.full((batch * seq, experts), 0.5)
    balanced_ids = jnp.asarray(np.arange(batch * seq) % experts)[:, None]
    collapsed_ids = jnp.zeros((batch * seq, 1), jnp.int32)
    balanced = sequence_balance_loss([(balanced_ids, uniform_scores)], batch, seq, mask, experts, k)
    collapsed_scores = jnp.asarray(np.tile([0.9, 0.1, 0.1, 0.1], (batch * seq, 1)))
    collapsed = sequence_balance_loss([(collapsed_ids, collapsed_scores)], batch, seq, mask, experts, k)
    np.testing.assert_allclose(balanced, 1.0, rtol=1e-6)
    assert float(collapsed) > 2.0


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    schedule = warmup_cosine(1.0, warmup_steps=4, total_steps=12, min_ratio=0.1)
    values = [float(schedule(n)) for n in range(12)]
    np.testing.assert_allclose(values[:4], [0.25, 0.5, 0.75, 1.0])
    assert all(b <= a for a, b in itertools.pairwise(values[3:]))
    np.testing.assert_allclose(values[-1], 0.1, rtol=1e-6)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("optimizer", "sgd", "optimizer"),
    ("batch_size", 6, "grad_accum_steps"),
    ("warmup_steps", 10_000, "warmup_steps"),
    ("seq_len", 0, "seq_len"),
])
def test_bad_experiment_fields_are_named(field, value, message):
    config = load_experiment(REPO / "experiments" / "tiny.py", grad_accum_steps=4)
    config[field] = value
    with pytest.raises(ExperimentConfigError, match=message):
        validate(config)


def test_vocab_size_comes_from_the_tokenizer():
    config = load_experiment(REPO / "experiments" / "tiny.py")
    assert model_config_from(config, vocab_size=321).vocab_size == 321
    config.model_overrides.vocab_size = 100
    with pytest.raises(ExperimentConfigError, match="tokenizer"):
        validate(config)


def test_dense_baseline_experiment_differs_only_in_the_model():
    tiny = load_experiment(REPO / "experiments" / "tiny.py").to_dict()
    dense = load_experiment(REPO / "experiments" / "dense_baseline.py").to_dict()
    assert dense.pop("model") == "dense_baseline" and tiny.pop("model") == "tiny"
    assert dense == tiny


@pytest.mark.parametrize("seq,chunk", [(32, 8), (32, 32), (30, 8)])
def test_chunked_cross_entropy_equals_cross_entropy_on_full_logits(seq, chunk):
    """Value and gradients (hidden and head kernel), for the main head and the MTP steps."""
    from glm5_jax.train.losses import (
        chunked_cross_entropy,
        cross_entropy,
        mtp_chunked_cross_entropy,
        mtp_cross_entropy,
    )

    rng = np.random.RandomState(seq + chunk)
    b, d, vocab, steps = 2, 8, 40, 2
    hidden = jnp.asarray(rng.randn(steps, b, seq, d), jnp.float32)
    kernel = jnp.asarray(rng.randn(d, vocab), jnp.float32)
    targets = jnp.asarray(rng.randint(0, vocab, (b, seq)), jnp.int32)
    mask = jnp.asarray(rng.uniform(size=(b, seq)) < 0.8, jnp.float32)
    segments = jnp.asarray((np.arange(seq)[None] >= seq // 2).astype(np.int32).repeat(b, 0) + 1)
    tokens = jnp.sum(mask)

    def full(h, w):
        return (cross_entropy(h[0] @ w, targets, mask)
                + mtp_cross_entropy(jnp.einsum("nbsd,dv->nbsv", h, w), targets, mask, segments))

    def chunked(h, w):
        return (chunked_cross_entropy(h[0], w, targets, mask, chunk=chunk) / tokens
                + mtp_chunked_cross_entropy(h, w, targets, mask, segments))

    want, want_grads = jax.value_and_grad(full, argnums=(0, 1))(hidden, kernel)
    got, got_grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))(hidden, kernel)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(got_grads, want_grads):
        # float32 1e-5, relative to the leaf's scale (near-zero entries inherit the sums' rounding).
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(w))))


def test_routed_counts_by_segment_sums_equal_the_one_hot_definition():
    from glm5_jax.train.losses import routed_counts

    rng = np.random.RandomState(0)
    experts = 6
    ids = rng.randint(0, experts + 1, (3, 2, 5, 4))  # [layers, b, s, k]; id 6 = dropped slot
    mask = (rng.uniform(size=(2, 5)) < 0.7).astype(np.float32)
    onehot = np.eye(experts + 1)[ids][..., :experts]  # [layers, b, s, k, E]
    want = np.einsum("lbske,bs->lbe", onehot, mask)
    np.testing.assert_allclose(routed_counts(jnp.asarray(ids), jnp.asarray(mask), experts), want)
