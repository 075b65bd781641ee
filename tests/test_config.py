"""Every config rule rejects bad values with an error that names the field."""

import copy
import dataclasses
import functools

import jax
import jax.numpy as jnp
import pytest

from glm5_jax.config import ConfigError, ModelConfig, dense_baseline, get_preset, tiny
from glm5_jax.model.param_count import count_parameters

BAD = [
    (dict(num_attention_heads=6, num_key_value_heads=4), "num_attention_heads"),
    (dict(num_experts_per_tok=9), "num_experts_per_tok"),
    (dict(topk_group=3), "topk_group"),
    (dict(n_routed_experts=9), "n_routed_experts"),
    (dict(qk_rope_head_dim=7), "qk_rope_head_dim"),
    (dict(index_head_dim=4), "index_head_dim"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(rope_type="linear"), "rope_type"),
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(moe_impl="megablocks"), "moe_impl"),
    (dict(dtype="int8"), "dtype"),
    (dict(router_mode="soft"), "router_mode"),
    (dict(router_mode="dynamic", router_k_min=3, router_k_max=2), "router_k_min"),
    (dict(router_mode="dynamic", router_k_max=5), "router_k_max"),
    (dict(router_mode="dynamic", router_score_threshold=1.5), "router_score_threshold"),
    (dict(indexer_types=("shared", "full", "full", "full", "full")), "indexer_types[0]"),
    (dict(indexer_types=("full", "sparse", "full", "full", "full")), "indexer_types[1]"),
    (dict(indexer_types=("full", "full")), "indexer_types has 2 entries"),
    (dict(mlp_layer_types=("sparse", "dense", "sparse", "sparse", "sparse")), "mlp_layer_types"),
    (dict(mlp_layer_types=("dense", "moe", "sparse", "sparse", "sparse")), "mlp_layer_types[1]"),
    (dict(mtp_share_parameters=False, mtp_num_steps=3, num_mtp_layers=1), "mtp_num_steps"),
]


@pytest.mark.parametrize("changes,field", BAD, ids=[f for _, f in BAD])
def test_bad_values_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        tiny().replace(**changes)


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="num_expert_per_token"):
        ModelConfig.from_dict({**tiny().to_dict(), "num_expert_per_token": 2})


def test_unknown_preset_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="tiny"):
        get_preset("huge")


def test_round_trip_through_dict():
    assert ModelConfig.from_dict(tiny().to_dict()) == tiny()


def _with_field_changed(config: ModelConfig, name: str) -> ModelConfig:
    """A copy that differs in ``name`` only (validation bypassed: only eq/hash are under test)."""
    value = getattr(config, name)
    if isinstance(value, bool):
        new = not value
    elif isinstance(value, (int, float)):
        new = value * 2 + 1
    elif isinstance(value, str):
        new = value + "_changed"
    elif isinstance(value, tuple):
        new = (*value, value[0])
    elif value is None:
        new = 0
    else:
        raise TypeError(f"{name}: unexpected {type(value).__name__}; extend this test")
    changed = copy.copy(config)
    object.__setattr__(changed, name, new)
    return changed


def test_equality_and_hash_see_every_field():
    """jit caches on (hash, ==) of static args: a field left out of either would let two
    different models share one compiled program."""
    base = tiny()
    equal = ModelConfig.from_dict(base.to_dict())
    assert equal is not base and equal == base and hash(equal) == hash(base)
    for field in dataclasses.fields(ModelConfig):
        changed = _with_field_changed(base, field.name)
        assert changed != base, field.name
        assert hash(changed) != hash(base), field.name


def test_jit_retraces_on_a_changed_config_not_on_an_equal_copy():
    traced = []

    @functools.partial(jax.jit, static_argnums=0)
    def scaled(config, x):
        traced.append(config)
        return x * config.index_topk

    base = tiny()
    other = base.replace(index_topk=base.index_topk + 1)
    x = jnp.ones((), jnp.float32)
    assert float(scaled(base, x)) == base.index_topk
    assert float(scaled(ModelConfig.from_dict(base.to_dict()), x)) == base.index_topk
    assert len(traced) == 1, "an equal config must reuse the compiled program"
    assert float(scaled(other, x)) == other.index_topk
    assert len(traced) == 2, "a changed config must be traced again"


def test_full_preset_counts_match_the_release():
    """GLM-5: 744B parameters in total, ~40B active per token (from abstract shapes only)."""
    counts = count_parameters(get_preset("glm5_full"))
    assert 740e9 < counts["total_without_mtp"] < 748e9
    assert 38e9 < counts["active_per_token_without_embedding"] < 42e9


def test_dense_baseline_matches_active_parameters():
    moe, dense = count_parameters(tiny()), count_parameters(dense_baseline())
    router = tiny().hidden_size * tiny().n_routed_experts * tiny().num_moe_layers
    assert dense["routed_experts"] == 0
    assert moe["active_per_token"] - dense["active_per_token"] == router
