"""Continuous batching: requests joining and leaving a running batch draw exactly what batch
generation draws for the same (seed, index), also when the decode batch shrinks to the running
requests; weights swapped between decode steps are recorded per token and take over the running
requests' caches; no program is compiled twice.

Six requests of mixed prompt lengths (3 to 30 tokens, so rows start both below and above
index_topk=8) and mixed max_new_tokens share 3 slots, so slots are refilled while others run.
"""

import jax
import numpy as np
import pytest
from hf_reference import relative_error

import glm5_jax
from glm5_jax.config import tiny
from glm5_jax.sample.continuous import ContinuousBatcher, Request, compiled_slot_programs
from glm5_jax.sample.engine import run_batch
from glm5_jax.sharding import make_mesh

CONFIG = tiny().replace(index_topk=8, initializer_range=0.1, eos_token_id=None)
PROMPT_LENGTHS = (5, 20, 3, 12, 9, 30)
MAX_NEW = (8, 3, 12, 5, 10, 6)
SLOTS, CAPACITY, SEED = 3, 48, 3
LOGPROB_RTOL = 1e-5  # float32; prefill shapes differ (per-slot buckets vs one padded batch)


@pytest.fixture(scope="module")
def setup():
    variables = glm5_jax.init_variables(glm5_jax.GLM5Model(CONFIG), jax.random.PRNGKey(0))
    rng = np.random.RandomState(0)
    prompts = [list(rng.randint(2, CONFIG.vocab_size, size=n)) for n in PROMPT_LENGTHS]
    return variables, prompts


def requests(prompts, max_new=MAX_NEW, seed=SEED):
    return [Request(p, m, seed=seed, index=i, tag=i) for i, (p, m) in enumerate(zip(prompts, max_new))]


def batcher(variables, temperature=0.0, **options):
    b = ContinuousBatcher(CONFIG, SLOTS, CAPACITY, temperature, **options)
    b.set_weights(variables, 0)
    return b


@pytest.mark.parametrize("temperature,steps_per_call", [(0.0, 1), (1.0, 3)])
def test_continuous_batching_draws_what_batch_generation_draws(setup, temperature, steps_per_call):
    variables, prompts = setup
    # One padded batch decoding every row to the longest max_new_tokens: a request's tokens
    # depend on its (seed, index) and token index only, so its prefix is what it must draw.
    reference = run_batch(CONFIG, variables, prompts, max(MAX_NEW), temperature=temperature, seed=SEED).generations
    completions = batcher(variables, temperature, steps_per_call=steps_per_call).run(requests(prompts))
    for completion, expected, max_new in zip(completions, reference, MAX_NEW):
        assert completion.token_ids == expected.token_ids[:max_new]
        assert relative_error(completion.logprobs, expected.logprobs[:max_new]) <= LOGPROB_RTOL
        assert completion.finish_reason == "length" and completion.token_versions == [0] * max_new
    # Alone, as row 0 of its own call (first_request names its index), request 4 draws the same.
    alone = run_batch(CONFIG, variables, [prompts[4]], MAX_NEW[4], temperature=temperature, seed=SEED,
                      first_request=4).generations[0]
    assert alone.token_ids == completions[4].token_ids
    if temperature:  # the seed matters: another seed draws other tokens
        other = batcher(variables, temperature).run(requests(prompts, seed=SEED + 1))
        assert [c.token_ids for c in other] != [c.token_ids for c in completions]


def test_the_decode_batch_shrinks_to_the_running_requests_and_draws_the_same(setup):
    """8 slots, decode programs for the first 1, 2, 4 or 8 of them: as requests finish, each
    chunk runs the smallest prefix holding the running ones, and requests left beyond it move
    down first. Sampled tokens and log-probs are those of the full-width batcher, chunk by
    chunk, and of batch generation."""
    variables, prompts = setup
    max_new = (14, 3, 12, 5, 10, 18)
    reference = run_batch(CONFIG, variables, prompts, max(max_new), temperature=1.0, seed=SEED).generations
    full = ContinuousBatcher(CONFIG, 8, CAPACITY, 1.0, steps_per_call=2, min_rows=8)
    shrinking = ContinuousBatcher(CONFIG, 8, CAPACITY, 1.0, steps_per_call=2, min_rows=1)
    assert (full.row_buckets, shrinking.row_buckets) == ([8], [1, 2, 4, 8])
    results = {}
    for b in (full, shrinking):
        b.set_weights(variables, 0)
        results[id(b)] = b.run(requests(prompts, max_new=max_new))
    moved = shrinking.decode_calls_by_rows
    # 6 running -> 8 rows until 4 remain, ... down to request 5 alone (it started in slot 5).
    assert set(moved) == {8, 4, 2, 1} and full.decode_calls_by_rows.keys() == {8}
    assert sum(moved.values()) == sum(full.decode_calls_by_rows.values())
    for got, want, expected, n in zip(results[id(shrinking)], results[id(full)], reference, max_new):
        assert got.token_ids == want.token_ids == expected.token_ids[:n]
        assert relative_error(got.logprobs, want.logprobs) <= LOGPROB_RTOL
    assert shrinking.idle and not shrinking._running


def test_slots_sharded_over_a_mesh_draw_what_one_device_draws(setup):
    """4 slots over data=2 (two per device) with the heads over tensor=2: the same tokens as
    the one-device batcher, log-probs to float32 reduction order, and the slot state stays
    split over the data axis from call to call."""
    variables, prompts = setup
    mesh = make_mesh("data=2,tensor=2", jax.devices()[:4])
    single = ContinuousBatcher(CONFIG, 4, CAPACITY, 1.0, steps_per_call=2)
    single.set_weights(variables, 0)
    sharded = ContinuousBatcher(CONFIG, 4, CAPACITY, 1.0, steps_per_call=2, mesh=mesh)
    sharded.set_weights(variables, 0)
    expected = single.run(requests(prompts))
    got = sharded.run(requests(prompts))
    for a, b in zip(got, expected):
        assert a.token_ids == b.token_ids
        assert relative_error(a.logprobs, b.logprobs) <= LOGPROB_RTOL
    for leaf in jax.tree.leaves(sharded.state.decode.cache) + [sharded.state.decode.tokens]:
        assert leaf.sharding.mesh == mesh and len(leaf.sharding.device_set) == 4
        assert leaf.addressable_shards[0].data.size * 2 == leaf.size, leaf.sharding  # half the slots each
    with pytest.raises(ValueError, match="slots=3 must split evenly"):
        ContinuousBatcher(CONFIG, 3, CAPACITY, mesh=mesh)


def test_eos_frees_the_slot_early_and_keeps_the_rest_identical(setup):
    variables, prompts = setup
    reference = run_batch(CONFIG, variables, prompts, max(MAX_NEW), temperature=1.0, seed=SEED).generations
    eos = reference[2].token_ids[4]  # request 2 ends at its 5th token (or earlier if it recurs)
    expected = run_batch(CONFIG, variables, prompts, max(MAX_NEW), temperature=1.0, seed=SEED,
                         eos_token_id=eos).generations
    completions = batcher(variables, 1.0, eos_token_id=eos).run(requests(prompts))
    assert completions[2].finish_reason == "eos" and len(completions[2].token_ids) <= 5
    for completion, generation, max_new in zip(completions, expected, MAX_NEW):
        assert completion.token_ids == generation.token_ids[:max_new]


def perturbed(variables, scale=1.5):
    """Other weights of the same shapes: every output projection scaled."""
    def scale_outputs(path, leaf):
        names = {str(getattr(key, "key", key)) for key in path}
        return leaf * scale if names & {"o_proj", "down_proj"} else leaf

    return jax.tree_util.tree_map_with_path(scale_outputs, variables)


@pytest.mark.parametrize("recompute", [True, False])
def test_weights_swapped_between_steps_are_recorded_per_token(setup, recompute):
    """Two chunks under version 0, then version 1. Every token carries the version that sampled
    it, and with recomputation the tokens after the switch are exactly version 1's continuation
    of the context (prompt + tokens so far); keeping the old caches gives other numbers."""
    variables, prompts = setup
    new_variables = perturbed(variables)
    b = batcher(variables, steps_per_call=2, recompute_on_update=recompute)
    for request in requests(prompts[:SLOTS], max_new=(12, 12, 12)):
        b.submit(request)
    assert b.step() == [] and b.step() == []  # 1 token from prefill + 2 x 2 steps = 5 tokens each
    b.set_weights(new_variables, version=1)
    completions = []
    while not b.idle:
        completions += b.step()
    completions.sort(key=lambda c: c.request.index)
    assert b.recomputed_tokens == (sum(len(p) + 4 for p in prompts[:SLOTS]) if recompute else 0)
    for completion, prompt in zip(completions, prompts):
        assert completion.token_versions == [0] * 5 + [1] * 7
        before = run_batch(CONFIG, variables, [prompt], 5).generations[0]
        assert completion.token_ids[:5] == before.token_ids
        after = run_batch(CONFIG, new_variables, [prompt + completion.token_ids[:5]], 7).generations[0]
        error = relative_error(completion.logprobs[5:], after.logprobs)
        if recompute:
            assert completion.token_ids[5:] == after.token_ids and error <= LOGPROB_RTOL
        else:
            assert error > 1e-3  # version 1 read version 0's caches


def test_requests_come_and_go_without_recompiling(setup):
    variables, prompts = setup
    compiled_slot_programs.cache_clear()  # fresh programs: other tests' batchers share them
    b = batcher(variables, 1.0)
    b.warm_up()
    sizes = (b._admit._cache_size(), b._decode._cache_size())
    b.run(requests(prompts))
    b.set_weights(perturbed(variables), version=1)  # new weights: an argument, not a constant
    b.run(requests(prompts[::-1], max_new=MAX_NEW[::-1], seed=SEED + 1))
    # Per prompt bucket one admission per width (1, 2 and admit_rows = 3 rows); one decode chunk.
    assert b.admit_widths == [1, 2, 3]
    assert (b._admit._cache_size(), b._decode._cache_size()) == sizes == (3 * len(b.buckets()), 1)
    shrinking = batcher(variables, 1.0, min_rows=1)  # decode chunks for 3 rows (b's) and 1, one move program
    shrinking.warm_up()
    sizes = (shrinking._decode._cache_size(), shrinking._move._cache_size())
    shrinking.run(requests(prompts))
    assert shrinking.row_buckets == [1, 3]
    assert (shrinking._decode._cache_size(), shrinking._move._cache_size()) == sizes == (2, 1)
    assert shrinking.decode_calls_by_rows[1] > 0


def test_requests_that_cannot_fit_are_refused(setup):
    variables, prompts = setup
    b = batcher(variables)
    with pytest.raises(ValueError, match="exceeds the slot capacity"):
        b.submit(Request(prompts[5], CAPACITY))
    with pytest.raises(ValueError, match="must both be >= 1"):
        b.submit(Request([], 4))
