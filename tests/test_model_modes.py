"""Modes off the default path, checked on numbers: the dense baseline's MLP (``moe_as_dense``),
decoding with DSA off (``indexer_mode="never"``) and a minimum decode-cache capacity
(``min_capacity``).

The decoding tests use test_sample_decode.py's model and prompts (index_topk=8; a 5-token
prompt that crosses index_topk while decoding and a 20-token one that is sparse from the start).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_reference import relative_error

from glm5_jax.config import dense_baseline, tiny
from glm5_jax.model import GLM5Model, init_variables
from glm5_jax.sample import engine
from glm5_jax.sample.engine import run_batch

RTOL = 1e-5  # float32, the same products summed in another order (WORKSPACE.md)
DECODE_CONFIG = tiny().replace(index_topk=8, initializer_range=0.1, eos_token_id=None)
PROMPT_LENGTHS = (5, 20)
MAX_NEW = 8


def _silu(x):
    return x / (1.0 + np.exp(-x))


def test_moe_as_dense_layer_is_one_swiglu_as_wide_as_the_active_experts():
    """An MoE layer of the dense baseline is one SwiGLU of width moe_intermediate_size *
    (n_shared + k): equal to the sum of n_shared + k expert-sized SwiGLUs over consecutive
    slices of its weights (every active expert at weight 1), applied to the layer's
    post-attention norm output. No router, no routing bias."""
    config = dense_baseline(tiny().replace(num_hidden_layers=2, first_k_dense_replace=1,
                                           indexer_types=("full", "shared"), num_mtp_layers=0,
                                           initializer_range=0.1))
    active, expert_width = config.n_shared_experts + config.num_experts_per_tok, config.moe_intermediate_size
    assert active * expert_width != config.intermediate_size  # the dense layers' width differs
    model = GLM5Model(config)
    variables = init_variables(model, jax.random.PRNGKey(0))
    mlp = variables["params"]["moe_layers"]["block"]["layer_0"]["mlp"]
    assert set(mlp) == {"gate_proj", "up_proj", "down_proj"}
    assert mlp["gate_proj"]["kernel"].shape == (1, config.hidden_size, active * expert_width)
    assert not jax.tree.leaves(variables.get("routing", {}))

    ids = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 12)), jnp.int32)

    def capture(module, method_name):
        return method_name == "__call__" and module.name in ("post_attention_layernorm", "mlp")

    _, state = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=capture,
                                                mutable=["intermediates"]))(variables, ids)
    layer = state["intermediates"]["moe_layers"]["block"]["layer_0"]
    h = np.asarray(layer["post_attention_layernorm"]["__call__"][0][0], np.float64)  # [b, s, d]
    got = layer["mlp"]["__call__"][0][0]

    d = config.hidden_size
    gate = np.asarray(mlp["gate_proj"]["kernel"][0], np.float64).reshape(d, active, expert_width)
    up = np.asarray(mlp["up_proj"]["kernel"][0], np.float64).reshape(d, active, expert_width)
    down = np.asarray(mlp["down_proj"]["kernel"][0], np.float64).reshape(active, expert_width, d)
    want = sum(
        (_silu(h @ gate[:, e]) * (h @ up[:, e])) @ down[e] for e in range(active))
    assert got.shape == want.shape and np.max(np.abs(want)) > 1e-3
    assert relative_error(got, want) <= RTOL


@pytest.fixture(scope="module")
def decoding():
    variables = init_variables(GLM5Model(DECODE_CONFIG), jax.random.PRNGKey(0))
    rng = np.random.RandomState(0)
    prompts = [list(rng.randint(2, DECODE_CONFIG.vocab_size, size=n)) for n in PROMPT_LENGTHS]
    return variables, prompts


def _expected_logprobs(config, variables, prompts, generations) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row: (argmax, log-probability of each generated token) from a full forward of
    ``config`` over prompt + generation (right-padded into one batch; causal)."""
    sequences = [p + g.token_ids for p, g in zip(prompts, generations)]
    batch = np.zeros((len(sequences), max(map(len, sequences))), np.int32)
    for i, s in enumerate(sequences):
        batch[i, :len(s)] = s
    logits = np.asarray(jax.jit(GLM5Model(config).apply)(variables, jnp.asarray(batch)), np.float64)
    rows = []
    for row, (prompt, generation) in enumerate(zip(prompts, generations)):
        at = logits[row, np.arange(len(prompt) - 1, len(prompt) - 1 + len(generation.token_ids))]
        log_probs = at - at.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        rows.append((np.argmax(at, -1), log_probs[np.arange(len(at)), generation.token_ids]))
    return rows


def test_indexer_mode_never_decodes_with_dense_attention(decoding):
    """DSA off: greedy tokens and log-probabilities are the full forward's with every causal key
    attended (index_topk >= the sequence), which differ from the sparse model's here."""
    variables, prompts = decoding
    never = run_batch(DECODE_CONFIG, variables, prompts, MAX_NEW, indexer_mode="never")
    generations = never.generations
    assert [len(g.token_ids) for g in generations] == [MAX_NEW, MAX_NEW]
    dense_config = DECODE_CONFIG.replace(index_topk=64)
    assert len(prompts[1]) + MAX_NEW <= dense_config.index_topk
    dense = _expected_logprobs(dense_config, variables, prompts, generations)
    sparse = _expected_logprobs(DECODE_CONFIG, variables, prompts, generations)
    for generation, (argmax, logprobs) in zip(generations, dense):
        np.testing.assert_array_equal(argmax, generation.token_ids)
        assert relative_error(generation.logprobs, logprobs) <= RTOL
    # The sparse model gives the long row other numbers, far beyond the tolerance.
    assert relative_error(sparse[1][1], dense[1][1]) > 100 * RTOL


def test_min_capacity_sets_the_cache_capacity_and_changes_no_output(decoding, monkeypatch):
    """min_capacity raises the cache capacity (rounded up to a multiple of 16) and never lowers
    it below what the batch needs; outputs are those of the default capacity."""
    variables, prompts = decoding
    capacities = []
    compiled = engine.compiled

    def recording(config, kind, capacity, *rest):
        capacities.append(capacity)
        return compiled(config, kind, capacity, *rest)

    monkeypatch.setattr(engine, "compiled", recording)
    needed = 24 + MAX_NEW + 1  # prompts padded to 24, the new tokens, one slot for the last
    default = run_batch(DECODE_CONFIG, variables, prompts, MAX_NEW)
    raised = run_batch(DECODE_CONFIG, variables, prompts, MAX_NEW, min_capacity=100)
    below_need = run_batch(DECODE_CONFIG, variables, prompts, MAX_NEW, min_capacity=needed - 20)
    assert capacities == [engine.round_up(needed, 16), 112, engine.round_up(needed, 16)]
    for result in (raised, below_need):
        for got, want in zip(result.generations, default.generations):
            assert got.token_ids == want.token_ids
            # atol too: log-probs near 0 (probabilities near 1) have no relative scale.
            np.testing.assert_allclose(got.logprobs, want.logprobs, rtol=RTOL, atol=RTOL)
