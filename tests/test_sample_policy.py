"""Sampling policy, speculative acceptance and stop criteria on small hand-made inputs (no model)."""

import jax
import jax.numpy as jnp
import numpy as np

from glm5_jax.sample.acceptance import verify_drafts
from glm5_jax.sample.sampling import PolicyKind, choose, first_argmax, make_policy, policy_logits
from glm5_jax.sample.stop import StopCriteria


def policy(temperature=1.0, top_k=0, top_p=1.0):
    return make_policy(temperature, top_k, top_p, None, 4, seed=0), PolicyKind.of(temperature, top_k, top_p)


def kept(logits, **kw):
    p, kind = policy(**kw)
    return np.isfinite(np.asarray(policy_logits(jnp.asarray(logits), p, kind)))


def test_top_k_and_top_p_keep_the_documented_sets():
    logits = np.log(np.array([[0.5, 0.05, 0.3, 0.15]]))
    np.testing.assert_array_equal(kept(logits, top_k=2), [[True, False, True, False]])
    np.testing.assert_array_equal(kept(logits, top_p=0.5), [[True, False, False, False]])
    np.testing.assert_array_equal(kept(logits, top_p=0.8), [[True, False, True, False]])
    np.testing.assert_array_equal(kept(logits, top_p=0.81), [[True, False, True, True]])
    np.testing.assert_array_equal(kept(logits, top_k=3, top_p=0.99), [[True, False, True, True]])


def test_choose_returns_policy_logprob_and_greedy_returns_model_logprob():
    logits = jnp.log(jnp.array([[0.5, 0.05, 0.3, 0.15]]))
    p, kind = policy(temperature=0.0)
    token, logprob = choose(logits, p, kind, jax.random.split(jax.random.PRNGKey(0), 1))
    assert int(token[0]) == 0 and np.isclose(float(logprob[0]), np.log(0.5))
    p, kind = policy(top_k=2)
    token, logprob = choose(logits, p, kind, jax.random.split(jax.random.PRNGKey(0), 1))
    expected = {0: np.log(0.5 / 0.8), 2: np.log(0.3 / 0.8)}
    assert np.isclose(float(logprob[0]), expected[int(token[0])], atol=1e-6)


def test_first_argmax_is_argmax_with_ties_and_nans():
    rng = np.random.default_rng(0)
    logits = rng.integers(-3, 4, size=(64, 50)).astype(np.float32)  # many tied maxima per row
    logits[5, 7] = logits[9, 0] = logits[9, 49] = np.nan
    logits[11] = -np.inf
    got = np.asarray(jax.jit(first_argmax)(jnp.asarray(logits)))
    np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(logits), axis=-1)))
    assert got[5] == 7 and got[9] == 0 and got[11] == 0 and got.dtype == np.int32


def test_greedy_verification_keeps_the_agreeing_prefix():
    vocab = 5
    best = np.array([[3, 1, 4], [2, 2, 0]])  # argmax per verified position
    target = jax.nn.one_hot(best, vocab) * 5.0
    drafts = jnp.array([[3, 0], [2, 2]])  # row 0 agrees once, row 1 twice
    p, kind = policy(temperature=0.0)
    accepted, emitted, logprobs = verify_drafts(target, jnp.zeros((2, 2, vocab)), drafts, p, kind,
                                                jax.random.split(jax.random.PRNGKey(0), 2))
    np.testing.assert_array_equal(accepted, [1, 2])
    np.testing.assert_array_equal(emitted[0, :2], [3, 1])
    np.testing.assert_array_equal(emitted[1], [2, 2, 0])
    np.testing.assert_allclose(logprobs, jax.nn.log_softmax(target)[jnp.arange(2)[:, None], jnp.arange(3), emitted],
                               rtol=1e-6)


def test_speculative_sampling_preserves_the_target_distribution():
    """Drafts from q, verified against p: the emitted tokens are distributed as p (Monte Carlo)."""
    n = 20000
    p0, p1 = np.array([0.1, 0.6, 0.3]), np.array([0.5, 0.2, 0.3])
    q0 = np.array([0.6, 0.2, 0.2])
    keys = jax.random.split(jax.random.PRNGKey(1), n)
    drafts = jax.vmap(lambda k: jax.random.categorical(k, jnp.log(q0)))(jax.random.split(jax.random.PRNGKey(2), n))
    target = jnp.broadcast_to(jnp.log(jnp.stack([p0, p1])), (n, 2, 3))
    draft_logits = jnp.broadcast_to(jnp.log(q0), (n, 1, 3))
    p, kind = policy(temperature=1.0)
    accepted, emitted, logprobs = verify_drafts(target, draft_logits, drafts[:, None].astype(jnp.int32), p, kind, keys)
    first = np.bincount(np.asarray(emitted[:, 0]), minlength=3) / n
    np.testing.assert_allclose(first, p0, atol=0.015)
    # the acceptance rate is sum(min(p, q)) = 0.1 + 0.2 + 0.2
    assert abs(float(np.mean(accepted)) - 0.5) < 0.015
    second = np.asarray(emitted[:, 1])[np.asarray(accepted) == 1]
    np.testing.assert_allclose(np.bincount(second, minlength=3) / len(second), p1, atol=0.03)
    np.testing.assert_allclose(logprobs[:, 0], np.log(p0)[np.asarray(emitted[:, 0])], rtol=1e-5)


def test_stop_criteria_keep_through_the_completing_token():
    vocab = {1: "a", 2: "b", 3: "c\nd", 4: "e"}
    criteria = StopCriteria.parse(["\n", [4, 4]], lambda ids: "".join(vocab[i] for i in ids))
    assert criteria.kept_length([1, 2, 3, 4]) == 3
    assert criteria.kept_length([1, 4, 4, 3]) == 3
    assert criteria.kept_length([1, 2]) is None
    assert not StopCriteria.parse(None, None)
