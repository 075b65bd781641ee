"""Cached decoding equals the full forward; speculative decoding equals plain decoding.

One tiny GLM-5 (dense prefix, MoE, shared indexer layers, MTP) with index_topk=8 and a batch of
a 5-token and a 20-token prompt: the short row starts below index_topk and crosses it while
decoding, the long one is sparse from the start. Compiled programs are shared by every test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from drafter_weights import drafter_friendly
from hf_reference import relative_error

import glm5_jax
from glm5_jax.config import tiny
from glm5_jax.sample.engine import run_batch

CONFIG = tiny().replace(index_topk=8, initializer_range=0.1, eos_token_id=None)
PROMPT_LENGTHS = (5, 20)
MAX_NEW = 8
LOGPROB_RTOL = 1e-5  # float32; the cache path differs from the full forward by summation order only


@pytest.fixture(scope="module")
def setup():
    model = glm5_jax.GLM5Model(CONFIG)
    variables = glm5_jax.init_variables(model, jax.random.PRNGKey(0))
    rng = np.random.RandomState(0)
    prompts = [list(rng.randint(2, CONFIG.vocab_size, size=n)) for n in PROMPT_LENGTHS]
    full = jax.jit(model.apply)
    return model, variables, prompts, full


def full_forward_logits(setup, sequences):
    """Full-forward logits for each sequence, right-padded into one batch (causal: padding after a
    sequence cannot change its logits)."""
    _, variables, _, full = setup
    width = max(len(s) for s in sequences)
    batch = np.zeros((len(sequences), width), np.int32)
    for i, s in enumerate(sequences):
        batch[i, :len(s)] = s
    return np.asarray(full(variables, jnp.asarray(batch)), np.float64)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def greedy(setup):
    _, variables, prompts, _ = setup
    return run_batch(CONFIG, variables, prompts, MAX_NEW)


def test_greedy_decode_equals_full_forward(setup, greedy):
    prompts = setup[2]
    generations = greedy.generations
    assert [len(g.token_ids) for g in generations] == [MAX_NEW, MAX_NEW]
    logits = full_forward_logits(setup, [p + g.token_ids for p, g in zip(prompts, generations)])
    for row, (prompt, gen) in enumerate(zip(prompts, generations)):
        at = np.arange(len(prompt) - 1, len(prompt) - 1 + MAX_NEW)  # positions predicting each new token
        np.testing.assert_array_equal(np.argmax(logits[row, at], -1), gen.token_ids)
        expected = log_softmax(logits[row, at])[np.arange(MAX_NEW), gen.token_ids]
        assert relative_error(gen.logprobs, expected) <= LOGPROB_RTOL


def test_sparsity_matters_for_these_prompts(setup, greedy):
    """Dense attention (DSA off) changes the long row's logits: the selection really is exercised."""
    _, variables, prompts, _ = setup
    dense = glm5_jax.GLM5Model(CONFIG.replace(index_topk=64))
    seq = jnp.asarray([prompts[1] + greedy.generations[1].token_ids], jnp.int32)
    sparse_logits = np.asarray(setup[3](variables, seq))
    dense_logits = np.asarray(jax.jit(dense.apply)(variables, seq))
    assert relative_error(dense_logits, sparse_logits) > 1e-3


def test_indexer_skip_is_exact(setup, greedy):
    """Running the indexer on short contexts (no skipping) gives the same tokens and logprobs."""
    _, variables, prompts, _ = setup
    always = run_batch(CONFIG, variables, prompts, MAX_NEW, indexer_mode="always")
    for a, b in zip(always.generations, greedy.generations):
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-6, atol=1e-6)


def test_sampled_logprobs_are_policy_logprobs(setup):
    """With temperature and top-k, each logprob is log softmax(logits / T) renormalised on the top k."""
    _, variables, prompts, _ = setup
    temperature, top_k = 0.7, 20
    result = run_batch(CONFIG, variables, prompts, MAX_NEW, temperature=temperature, top_k=top_k, seed=3)
    again = run_batch(CONFIG, variables, prompts, MAX_NEW, temperature=temperature, top_k=top_k, seed=3)
    assert [g.token_ids for g in result.generations] == [g.token_ids for g in again.generations]
    logits = full_forward_logits(setup, [p + g.token_ids for p, g in zip(prompts, result.generations)])
    for row, (prompt, gen) in enumerate(zip(prompts, result.generations)):
        at = logits[row, np.arange(len(prompt) - 1, len(prompt) - 1 + MAX_NEW)] / temperature
        kth = np.sort(at, -1)[:, -top_k][:, None]
        policy = log_softmax(np.where(at >= kth, at, -np.inf))
        expected = policy[np.arange(MAX_NEW), gen.token_ids]
        assert np.all(np.isfinite(expected)), "a sampled token lies outside the top-k set"
        assert relative_error(gen.logprobs, expected) <= LOGPROB_RTOL


def test_stop_sequences_and_max_new_tokens(setup, greedy):
    _, variables, prompts, _ = setup
    tokens = greedy.generations[0].token_ids
    stop = [tokens[2:4]]  # completes at the 4th new token of row 0
    result = run_batch(CONFIG, variables, prompts, MAX_NEW, stop=stop)
    assert result.generations[0].token_ids == tokens[:4]
    assert result.generations[0].finish_reason == "stop"
    assert result.generations[1].token_ids == greedy.generations[1].token_ids[:len(result.generations[1].token_ids)]
    eos = run_batch(CONFIG, variables, prompts, MAX_NEW, eos_token_id=tokens[1])
    assert eos.generations[0].token_ids == tokens[:2] and eos.generations[0].finish_reason == "eos"


def test_speculative_greedy_equals_plain(setup, greedy):
    _, variables, prompts, _ = setup
    result = run_batch(CONFIG, variables, prompts, MAX_NEW, speculative_steps=3)
    assert [g.token_ids for g in result.generations] == [g.token_ids for g in greedy.generations]
    for a, b in zip(result.generations, greedy.generations):
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-5)
    assert result.mean_accepted_length >= 1.0


def test_speculative_with_a_good_drafter_accepts_several_tokens_and_is_exact(setup):
    _, variables, prompts, _ = setup
    variables = drafter_friendly(variables, CONFIG)
    plain = run_batch(CONFIG, variables, prompts, MAX_NEW)
    speculative = run_batch(CONFIG, variables, prompts, MAX_NEW, speculative_steps=3)
    assert [g.token_ids for g in speculative.generations] == [g.token_ids for g in plain.generations]
    for a, b in zip(speculative.generations, plain.generations):
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-5)
    assert speculative.mean_accepted_length > 2.0  # 3.2 here; a random MTP head gets ~1.0
