"""Cached decoding equals the full forward; speculative decoding equals plain decoding.

One tiny GLM-5 (dense prefix, MoE, shared indexer layers, MTP) with index_topk=8 and a batch of
a 5-token and a 20-token prompt: the short row starts below index_topk and crosses it while
decoding, the long one is sparse from the start. Compiled programs are shared by every test
(weights are arguments: the drafter variants below reuse them).

Accepted lengths are predicted, not bounded: from the full forward's MTP head (a random one
never agrees with the main model here) or by construction (a drafter identical to the target
accepts every draft). Sampled speculative decoding is checked token by token against the
policy and, over many seeds, in distribution.
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


def greedy_speculative_steps(prompt_length, tokens, first_drafts):
    """Decode steps of greedy speculation for one row, from the full forward: each step starts
    with the main cache holding positions < L and drafts token L + 1 from MTP at L - 1 (depth 1,
    what the full forward's first MTP step predicts there). A rejected first draft emits one
    token. Returns None if a first draft is accepted (deeper drafts would then decide)."""
    length, emitted, steps = prompt_length, 1, 0
    while emitted < MAX_NEW:
        steps += 1
        if first_drafts[length - 1] == tokens[length + 1]:
            return None
        length, emitted = length + 1, emitted + 1
    return steps


def test_speculative_greedy_equals_plain(setup, greedy):
    model, variables, prompts, _ = setup
    result = run_batch(CONFIG, variables, prompts, MAX_NEW, speculative_steps=3)
    assert [g.token_ids for g in result.generations] == [g.token_ids for g in greedy.generations]
    for a, b in zip(result.generations, greedy.generations):
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-5)
    # The accepted length, predicted from the full forward's MTP head (random: it never agrees
    # with the main model on these rows, so every step keeps exactly one token).
    sequences = [p + g.token_ids for p, g in zip(prompts, greedy.generations)]
    batch = np.zeros((2, max(map(len, sequences))), np.int32)
    for i, sequence in enumerate(sequences):
        batch[i, :len(sequence)] = sequence
    _, mtp_logits = jax.jit(lambda v, x: model.apply(v, x, return_mtp=True))(variables, jnp.asarray(batch))
    first_drafts = np.argmax(np.asarray(mtp_logits[0]), -1)
    expected = [greedy_speculative_steps(len(p), s, d)
                for p, s, d in zip(prompts, sequences, first_drafts)]
    assert None not in expected, "a first draft agrees: the prediction above no longer decides"
    np.testing.assert_array_equal(result.decode_steps, expected)
    np.testing.assert_array_equal(result.emitted, [MAX_NEW - 1] * 2)
    assert result.mean_accepted_length == (MAX_NEW - 1) * 2 / sum(expected) == 1.0


def test_speculative_with_a_good_drafter_accepts_several_tokens_and_is_exact(setup):
    _, variables, prompts, _ = setup
    variables = drafter_friendly(variables, CONFIG)
    plain = run_batch(CONFIG, variables, prompts, MAX_NEW)
    speculative = run_batch(CONFIG, variables, prompts, MAX_NEW, speculative_steps=3)
    assert [g.token_ids for g in speculative.generations] == [g.token_ids for g in plain.generations]
    for a, b in zip(speculative.generations, plain.generations):
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-5)
    assert speculative.mean_accepted_length > 2.0  # 3.2 here; a random MTP head gets ~1.0
    # Each step emits at most draft_steps + 1 = 4 tokens, so at least ceil(7 / 4) = 2 steps.
    assert np.all(speculative.decode_steps >= 2) and np.all(speculative.emitted >= MAX_NEW - 1)
    assert np.all(speculative.emitted <= MAX_NEW - 1 + 3)


def target_as_drafter(variables, config):
    """A drafter identical to the target: every attention and MLP output projection of the
    main model zeroed, so its next token is a function of the current token alone, and the
    MTP module set to that same function (``drafter_friendly``). Drafts then agree with the
    main model's policy up to float rounding: greedy and sampled speculation accept them all."""
    friendly = drafter_friendly(variables, config)

    def zero_outputs(path, leaf):
        names = {str(getattr(key, "key", key)) for key in path}
        return jnp.zeros_like(leaf) if names & {"o_proj", "down_proj", "wo"} else leaf

    return {**friendly, "params": jax.tree_util.tree_map_with_path(zero_outputs, friendly["params"])}


@pytest.fixture(scope="module")
def identical_drafter(setup):
    return target_as_drafter(setup[1], CONFIG)


def sharper_drafter(identical: dict, factor: float = 4.0) -> dict:
    """The identical drafter with its logits multiplied by ``factor``: the same ranking (so the
    same top-k set) but a much more peaked q; about half of its drafts are rejected, so the
    residual max(p - q, 0) supplies many tokens."""
    params = dict(identical["params"])
    params["mtp_0"] = {**params["mtp_0"],
                       "head_norm": jax.tree_util.tree_map(lambda w: w * factor, params["mtp_0"]["head_norm"])}
    return {**identical, "params": params}


def test_speculative_with_the_target_as_drafter_accepts_every_draft(setup, identical_drafter):
    _, _, prompts, _ = setup
    plain = run_batch(CONFIG, identical_drafter, prompts, MAX_NEW)
    speculative = run_batch(CONFIG, identical_drafter, prompts, MAX_NEW, speculative_steps=3)
    assert [g.token_ids for g in speculative.generations] == [g.token_ids for g in plain.generations]
    # Prefill emits 1 token, then 2 steps of 3 accepted drafts + 1 each: n_out 1 -> 5 -> 9.
    np.testing.assert_array_equal(speculative.decode_steps, [2, 2])
    np.testing.assert_array_equal(speculative.emitted, [8, 8])
    assert speculative.mean_accepted_length == 4.0
    assert plain.mean_accepted_length == 1.0  # 7 plain steps per row, one token each
    # A row that ends early (EOS among its first step's tokens) stops counting steps and
    # tokens; the other row goes on.
    eos = plain.generations[0].token_ids[2]
    assert eos not in plain.generations[0].token_ids[:2] + plain.generations[1].token_ids
    stopped = run_batch(CONFIG, identical_drafter, prompts, MAX_NEW, speculative_steps=3, eos_token_id=eos)
    assert stopped.generations[0].token_ids == plain.generations[0].token_ids[:3]
    assert stopped.generations[0].finish_reason == "eos"
    assert stopped.generations[1].token_ids == plain.generations[1].token_ids
    np.testing.assert_array_equal(stopped.decode_steps, [1, 2])
    np.testing.assert_array_equal(stopped.emitted, [4, 8])
    assert stopped.mean_accepted_length == 4.0


SAMPLED = {"temperature": 0.7, "top_k": 20}  # the kind test_sampled_logprobs_are_policy_logprobs compiles


def sampled_policy(setup, variables, result):
    """For every emitted token: (its log-prob from the full forward's policy, the policy's
    probabilities [MAX_NEW, V] at that position)."""
    _, _, prompts, full = setup
    sequences = [p + g.token_ids for p, g in zip(prompts, result.generations)]
    width = max(map(len, sequences))
    batch = np.zeros((len(sequences), width), np.int32)
    for i, sequence in enumerate(sequences):
        batch[i, :len(sequence)] = sequence
    logits = np.asarray(full(variables, jnp.asarray(batch)), np.float64)
    out = []
    for row, (prompt, generation) in enumerate(zip(prompts, result.generations)):
        at = logits[row, np.arange(len(prompt) - 1, len(prompt) - 1 + MAX_NEW)] / SAMPLED["temperature"]
        kth = np.sort(at, -1)[:, -SAMPLED["top_k"]][:, None]
        policy = log_softmax(np.where(at >= kth, at, -np.inf))
        out.append((policy[np.arange(MAX_NEW), generation.token_ids], np.exp(policy)))
    return out


def test_sampled_speculation_with_the_target_as_drafter_accepts_every_draft(setup, identical_drafter):
    _, _, prompts, _ = setup
    result = run_batch(CONFIG, identical_drafter, prompts, MAX_NEW, seed=5, speculative_steps=3, **SAMPLED)
    again = run_batch(CONFIG, identical_drafter, prompts, MAX_NEW, seed=5, speculative_steps=3, **SAMPLED)
    assert [g.token_ids for g in result.generations] == [g.token_ids for g in again.generations]
    np.testing.assert_array_equal(result.decode_steps, [2, 2])  # p == q: every draft accepted
    assert result.mean_accepted_length == 4.0
    greedy = run_batch(CONFIG, identical_drafter, prompts, MAX_NEW)
    assert [g.token_ids for g in result.generations] != [g.token_ids for g in greedy.generations]
    for gen, (expected, _) in zip(result.generations, sampled_policy(setup, identical_drafter, result)):
        assert len(gen.token_ids) == MAX_NEW and gen.finish_reason == "length"
        assert np.all(np.isfinite(expected)), "a sampled token lies outside the top-k set"
        assert relative_error(gen.logprobs, expected) <= LOGPROB_RTOL


SEEDS = 80
RANK_BUCKETS = ((0, 1), (1, 2), (2, 5), (5, 20))  # ranks under the policy: best, second, ...


@pytest.mark.parametrize("drafter", ["identical", "sharper", "friendly"])
def test_sampled_speculation_samples_the_policy(setup, identical_drafter, drafter):
    """Over 80 fixed seeds (1280 tokens), how often the emitted token is the policy's best,
    second, 3rd-5th or 6th-20th choice matches the policy's own probabilities of those ranks
    (each count's deviation within 4.5 standard deviations; the count is a sum of independent
    indicators given the prefixes). Drafters: identical to the target (every draft accepted),
    sharper (the residual path often), drafter_friendly (a real attention stack behind the
    target). Drafting argmax instead of sampling, or a residual that is p instead of
    max(p - q, 0), moves some count by 7 to 50 deviations here."""
    _, variables, prompts, _ = setup
    variables = {"identical": identical_drafter, "sharper": sharper_drafter(identical_drafter),
                 "friendly": drafter_friendly(variables, CONFIG)}[drafter]
    observed = np.zeros(len(RANK_BUCKETS))
    expected = np.zeros(len(RANK_BUCKETS))
    variance = np.zeros(len(RANK_BUCKETS))
    steps = emitted = 0
    for seed in range(SEEDS):
        result = run_batch(CONFIG, variables, prompts, MAX_NEW, seed=seed, speculative_steps=3, **SAMPLED)
        steps, emitted = steps + result.decode_steps.sum(), emitted + result.emitted.sum()
        for gen, (logprobs, probs) in zip(result.generations, sampled_policy(setup, variables, result)):
            assert np.all(np.isfinite(logprobs)) and relative_error(gen.logprobs, logprobs) <= LOGPROB_RTOL
            order = np.argsort(-probs, axis=-1, kind="stable")
            rank = np.argmax(order == np.asarray(gen.token_ids)[:, None], axis=-1)
            ranked = np.take_along_axis(probs, order, axis=-1)
            for b, (lo, hi) in enumerate(RANK_BUCKETS):
                p = ranked[:, lo:hi].sum(-1)
                observed[b] += np.sum((rank >= lo) & (rank < hi))
                expected[b] += p.sum()
                variance[b] += np.sum(p * (1 - p))
    z = (observed - expected) / np.sqrt(variance)
    print(f"{drafter}: observed {observed}, expected {np.round(expected, 1)}, z {np.round(z, 2)}, "
          f"accepted length {emitted / steps:.2f}")
    assert np.all(np.abs(z) < 4.5), z
    accepted_length = emitted / steps
    if drafter == "identical":
        assert accepted_length == 4.0
    elif drafter == "sharper":  # 1.83 here: drafts rejected about half the time
        assert 1.3 < accepted_length < 2.5
    else:  # 3.53 here: most drafts, not all
        assert 2.5 < accepted_length < 4.0
