"""The learner on an 8-device mesh: parameters laid out by the logical rules, the DSA indexer
(and MTP) frozen, everything else updated; every objective compiles and steps."""

import importlib.util
from pathlib import Path

import jax
import numpy as np

from glm5_jax import GLM5Model, init_variables
from glm5_jax.rl.learner import Learner
from glm5_jax.rl.policy import PolicyPublisher, PolicySubscriber, policy_model_config

REPO = Path(__file__).resolve().parents[1]


def config_for(objective: str, kl_coef: float = 0.0):
    spec = importlib.util.spec_from_file_location("rl_base", REPO / "experiments" / "rl" / "tiny_async.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model_overrides = {"num_hidden_layers": 1, "first_k_dense_replace": 1, "num_mtp_layers": 1,
                              "mtp_num_steps": 1}
    config.mesh = "data=4,tensor=2"
    config.group_size, config.groups_per_batch, config.seq_len = 4, 2, 24  # > index_topk: DSA on
    config.objective, config.kl_coef = objective, kl_coef
    config.learning_rate = 1e-2
    return config


def batch(rows: int, seq: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(3, 100, (rows, seq)).astype(np.int32),
            "targets": rng.integers(3, 100, (rows, seq)).astype(np.int32),
            "loss_mask": (rng.random((rows, seq)) < 0.7).astype(np.float32),
            "rollout_logprobs": np.full((rows, seq), -4.6, np.float32),
            "advantages": rng.normal(size=(rows, seq)).astype(np.float32)}


def leaves_by_path(tree):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_update_freezes_indexer_and_mtp_and_shards_by_the_rules(tmp_path):
    # The default objective runs end to end in test_rl_end_to_end; here the decoupled one with
    # a reference KL (one compilation: the learner is the slow part of this suite).
    config = config_for("decoupled", kl_coef=0.1)
    model_config = policy_model_config(config, 128, 0, 1, 2)
    variables = init_variables(GLM5Model(model_config), jax.random.PRNGKey(0))
    learner = Learner(config, model_config, variables)
    kernel = learner.state.params["dense_layers"]["block"]["layer_0"]["self_attn"]["q_b_proj"]["kernel"]
    assert "tensor" in str(kernel.sharding.spec)  # heads over the tensor axis
    before = leaves_by_path(learner.state.params)
    metrics = learner.train(batch(8, 24))
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert metrics["kl_to_reference"] == 0.0  # the reference is the starting point
    after = leaves_by_path(learner.state.params)
    frozen = [p for p in before if "indexer" in p or "mtp_" in p]
    assert any("indexer" in p for p in frozen) and any("mtp_" in p for p in frozen)
    for path in before:
        changed = not np.array_equal(before[path], after[path])
        assert changed == (path not in frozen), path

    # Weight push round trip: a worker reads exactly the learner's weights.
    publisher = PolicyPublisher(tmp_path)
    cost = publisher.publish(3, learner.variables)
    assert cost["push/bytes"] > 0
    subscriber = PolicySubscriber(tmp_path)
    assert subscriber.refresh() and subscriber.version == 3 and not subscriber.refresh()
    np.testing.assert_array_equal(leaves_by_path(subscriber.variables)["['params']['embed_tokens']"],
                                  np.asarray(learner.state.params["embed_tokens"]))
