"""Our logits equal transformers' GlmMoeDsaForCausalLM on random tiny checkpoints (float32)."""

import numpy as np
import pytest

pytest.importorskip("transformers", reason="needs the [hf] extra (installed by the test command)")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import glm5_jax  # noqa: E402
from hf_reference import hf_logits, make_hf_checkpoint, relative_error  # noqa: E402

PARITY_RTOL = 1e-4  # float32 end to end; differences are summation order only

CASES = {
    # shared indexer layers, one dense prefix layer, sequences 3x index_topk
    "shared_indexer": dict(),
    # group-limited routing: 4 groups of 4 experts, the best 2 groups eligible
    "grouped_router": dict(n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=3,
                           indexer_types=["full", "shared", "shared", "full"]),
    # two dense layers, no shared expert normalisation, index_topk 4
    "dense_prefix": dict(first_k_dense_replace=2, norm_topk_prob=False, index_topk=4,
                         indexer_types=["full", "full", "full", "shared"]),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(request.param))
    hf_model = make_hf_checkpoint(path, seed=len(request.param), **CASES[request.param])
    model, variables = glm5_jax.load_hf(path)
    return request.param, path, hf_model, model, variables


def logits(model, variables, ids, **kwargs):
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, jnp.asarray(ids, jnp.int32)))


def test_logits_match_transformers(checkpoint):
    name, _, hf_model, model, variables = checkpoint
    rng = np.random.RandomState(1)
    for seq_len in (5, 24):  # below and well above index_topk
        ids = rng.randint(0, model.config.vocab_size, size=(2, seq_len))
        ours = logits(model, variables, ids)
        err = relative_error(ours, hf_logits(hf_model, ids))
        assert err <= PARITY_RTOL, f"{name} seq={seq_len}: relative error {err:.2e}"


def test_sparsity_is_active(checkpoint):
    """At 24 tokens the top-k really drops keys: a dense-attention copy gives other logits."""
    _, _, hf_model, model, variables = checkpoint
    ids = np.random.RandomState(2).randint(0, model.config.vocab_size, size=(1, 24))
    dense = glm5_jax.GLM5Model(model.config.replace(index_topk=64))
    sparse_logits = logits(model, variables, ids)
    dense_logits = logits(dense, variables, ids)
    assert relative_error(sparse_logits, dense_logits) > 1e-2


def test_gather_path_matches_transformers(checkpoint):
    _, _, hf_model, model, variables = checkpoint
    gather = glm5_jax.GLM5Model(model.config.replace(attention_impl="gather"))
    ids = np.random.RandomState(3).randint(0, model.config.vocab_size, size=(2, 24))
    err = relative_error(logits(gather, variables, ids), hf_logits(hf_model, ids))
    assert err <= PARITY_RTOL


def test_save_load_round_trip_is_exact_and_transformers_loads_it(checkpoint, tmp_path):
    from transformers import GlmMoeDsaForCausalLM

    _, _, hf_model, model, variables = checkpoint
    glm5_jax.save_hf(model, variables, str(tmp_path))
    model2, variables2 = glm5_jax.load_hf(str(tmp_path))
    assert model2.config == model.config
    same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), variables, variables2)
    assert all(jax.tree_util.tree_leaves(same))
    reloaded = GlmMoeDsaForCausalLM.from_pretrained(str(tmp_path)).eval()
    ids = np.random.RandomState(4).randint(0, model.config.vocab_size, size=(1, 24))
    np.testing.assert_array_equal(hf_logits(reloaded, ids), hf_logits(hf_model, ids))


def test_mtp_modules_round_trip(tmp_path):
    """MTP weights (which transformers skips) survive save -> load bit for bit."""
    config = glm5_jax.get_preset("tiny")
    model = glm5_jax.GLM5Model(config)
    variables = glm5_jax.init_variables(model, jax.random.PRNGKey(0))
    glm5_jax.save_hf(model, variables, str(tmp_path))
    model2, variables2 = glm5_jax.load_hf(str(tmp_path))
    assert model2.config.num_mtp_layers == config.num_mtp_layers
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(variables2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ids = np.random.RandomState(5).randint(0, config.vocab_size, size=(1, 12))
    mtp = jax.jit(lambda v, x: model.apply(v, x, return_mtp=True)[1])
    np.testing.assert_array_equal(mtp(variables, ids), mtp(variables2, ids))
