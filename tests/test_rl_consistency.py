"""Learner and sampler agree: in lock-step every trained token was sampled by the weights the
learner holds, so the learner's log-prob of it must be the rollout's own, to float32 noise.

A difference here is a difference between two computations of one policy (temperature
scaling, precision, the cached decode path against the full forward, positions or padding,
the sparse-attention or MoE paths), which an importance ratio would silently absorb as
"off-policyness".
"""

import math

import pytest
from test_rl_end_to_end import read_metrics, small_config

from glm5_jax.rl.loop import train

# float32: log-probs of size ~1-10 computed by two programs (decode with caches, one full
# forward) agree to ~1e-6; 1e-4 leaves room for their accumulation order, nothing else.
MISMATCH_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def warm_start_cache(tmp_path_factory):
    """One warm start for both cases (cached by content)."""
    return str(tmp_path_factory.mktemp("warm_start"))


@pytest.mark.parametrize("objective,minibatches", [("direct_double_sided", 1), ("decoupled", 2)])
def test_lock_step_learner_logprobs_equal_the_rollouts(tmp_path, warm_start_cache, objective, minibatches):
    # The tiny preset itself (dense prefix, MoE, full and shared indexer layers, MTP), a
    # temperature that is not 1, and two-turn debugging episodes (feedback tokens between the
    # policy's, contexts past the indexer's top-k). One update per batch (the log-probs come
    # from the update's own forward pass) and two (from the proximal pass before them). A short
    # warm start so that some samples pass: the weights then change between versions.
    config, _ = small_config(tmp_path, mode="sync", num_workers=1, total_steps=4,
                             checkpoint_every=0, temperature=0.7, seq_len=80, model_overrides={},
                             objective=objective, minibatches=minibatches,
                             **{"eval.every": 0, "environment.kind": "debug",
                                "environment.max_turns": 2, "warm_start.steps": 120,
                                "warm_start.cache_dir": warm_start_cache})
    train(config, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # Not vacuous: some step before the last one moved the weights that later steps sampled with.
    assert any(r["learner/grad_norm"] > 0 for r in records[:-1]), "no reward variance: warm start longer"
    for record in records:
        assert record["staleness_histogram"] == {"0": 8}  # all sampled by the held version
        assert record["learner/logprob_mismatch_tokens"] > 0
        mismatch = record["learner/logprob_mismatch"]
        assert math.isfinite(mismatch) and mismatch <= MISMATCH_TOLERANCE, (record["step"], mismatch)
        # Every policy token of the batch is the held version's: the two measures coincide.
        assert record["learner/rollout_logprob_gap"] == mismatch
