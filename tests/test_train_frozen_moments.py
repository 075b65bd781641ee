"""DSA stage 1 (``dense_warmup``) freezes everything but the indexers, and their optimizer
state with them: the frozen groups' moments, Muon momentum and bias-correction count are
bit-identical after a step, while the indexer's move and its count advances by one.

The step test uses the same config as ``test_train_indexer_loss``'s stage-1 test, so the
persistent compilation cache shares its compiled program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from glm5_jax.sharding import activate
from glm5_jax.train.experiment import DENSE_WARMUP, load_experiment, stage_at
from glm5_jax.train.optimizer import (
    INDEXER_GROUP,
    MODEL_GROUP,
    keep_frozen_groups,
    make_optimizer,
)
from glm5_jax.train.run_setup import build_run
from glm5_jax.train.testing import (
    REPO,
    TEST_TOTAL_STEPS,
    cpu_test_config,
    write_test_corpus,
)


def _group(keystr: str) -> str | None:
    """The parameter group whose direction state a leaf belongs to (None: a global leaf)."""
    for group in (INDEXER_GROUP, MODEL_GROUP):
        if f"['{group}_" in keystr:
            return group
    return None


def _random_like(state, seed: int):
    """Every float leaf random (second moments non-negative), every count 5: moments that a
    zero gradient would visibly move (b1 * m != m), so "unchanged" is not "still zero"."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    values = []
    for keypath, leaf in leaves:
        name = jax.tree_util.keystr(keypath)
        if jnp.issubdtype(leaf.dtype, jnp.floating) and not name.endswith("ns_coeffs"):
            value = np.abs(rng.normal(size=leaf.shape)) + 0.1
            values.append(jax.device_put(jnp.asarray(value, leaf.dtype), leaf.sharding))
        elif name.endswith("count"):
            values.append(jax.device_put(jnp.full(leaf.shape, 5, leaf.dtype), leaf.sharding))
        else:
            values.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, values)


def _compare(before, after) -> dict[str, list[str]]:
    """Opt-state leaves by outcome: frozen/indexer group x unchanged/moved, plus global ones."""
    outcome = {"model unchanged": [], "model moved": [], "indexer unchanged": [],
               "indexer moved": [], "global": []}
    for (keypath, old), new in zip(jax.tree_util.tree_flatten_with_path(before)[0],
                                   jax.tree.leaves(after)):
        name = jax.tree_util.keystr(keypath)
        group = _group(name)
        if group is None:
            outcome["global"].append(name)
            continue
        same = np.array_equal(np.asarray(old), np.asarray(new))
        if name.endswith("ns_coeffs"):  # Muon's constant coefficients
            assert same, name
            continue
        outcome[f"{group} {'unchanged' if same else 'moved'}"].append(name)
    return outcome


def test_dense_warmup_step_keeps_frozen_optimizer_state(tmp_path):
    config = cpu_test_config(write_test_corpus(tmp_path / "corpus"), tmp_path / "data",
                             dense_warmup_steps=TEST_TOTAL_STEPS, warmup_steps=0, learning_rate=1e-2)
    assert stage_at(config, 1) == DENSE_WARMUP
    run = build_run(config, jax.devices()[:1])
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, run.model_config.vocab_size, (config.batch_size, config.seq_len + 1))
    batch = {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
             "segment_ids": np.ones((config.batch_size, config.seq_len), np.int32),
             "positions": np.tile(np.arange(config.seq_len, dtype=np.int32), (config.batch_size, 1)),
             "loss_mask": np.ones((config.batch_size, config.seq_len), np.float32)}
    with activate(run.mesh):
        state = run.init_state()
        state = state.replace(opt_state=_random_like(state.opt_state, seed=1))
        before = jax.device_get(state.opt_state)
        state, metrics = run.step_fn(DENSE_WARMUP)(state, run.to_device(batch))
        after = jax.device_get(state.opt_state)
    assert bool(metrics["step_applied"])

    outcome = _compare(before, after)
    assert not outcome["model moved"], outcome["model moved"][:5]
    assert len(outcome["model unchanged"]) > 50  # every frozen moment, and the group's count
    assert any(name.endswith("count") for name in outcome["model unchanged"])
    # The indexer trains: every one of its moments moves (random m: b1 * m + (1 - b1) * g != m).
    assert not outcome["indexer unchanged"], outcome["indexer unchanged"]
    indexer_counts = [name for name in outcome["indexer moved"] if name.endswith("count")]
    assert len(indexer_counts) == 1
    # The learning-rate schedule's count is the run's clock: one applied update more.
    for (keypath, old), new in zip(jax.tree_util.tree_flatten_with_path(before)[0], jax.tree.leaves(after)):
        name = jax.tree_util.keystr(keypath)
        if name.endswith("count"):
            assert int(new) == int(old) + (0 if _group(name) == MODEL_GROUP else 1), name


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_frozen_group_state_is_kept_for_each_optimizer(optimizer):
    """The optimizer alone, on a parameter tree with an indexer matrix, another matrix and a
    norm: AdamW's and Muon's frozen-group states (moments, momentum, counts) stay bit for bit."""
    config = load_experiment(REPO / "experiments" / "tiny.py", optimizer=optimizer)
    specs = {"attn": {"indexer": {"wq_b": P("q_lora", "index_heads", "head_dim"),
                                  "k_norm": P("norm")},
                      "q_a_proj": P("embed", "q_lora"), "norm": P("norm")}}
    shapes = {"attn": {"indexer": {"wq_b": (8, 2, 4), "k_norm": (4,)}, "q_a_proj": (16, 8), "norm": (16,)}}
    params = jax.tree.map(lambda shape: jnp.ones(shape), shapes, is_leaf=lambda x: isinstance(x, tuple))
    tx, _ = make_optimizer(config, specs)
    state = _random_like(tx.init(params), seed=2)
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
    _, new_state = tx.update(grads, state, params)
    trainable = {"attn": {"indexer": {"wq_b": True, "k_norm": True}, "q_a_proj": False, "norm": False}}
    outcome = _compare(state, keep_frozen_groups(new_state, state, trainable))
    assert not outcome["model moved"] and not outcome["indexer unchanged"], outcome
    labels = {name.split("['")[1].split("']")[0] for name in outcome["model unchanged"]}
    assert labels == ({"model_adamw"} if optimizer == "adamw" else {"model_adamw", "model_muon"})
    # Every stage trains whole groups; a group half frozen has no count to keep.
    with pytest.raises(ValueError, match="partly trainable"):
        keep_frozen_groups(new_state, state, {"attn": {"indexer": {"wq_b": True, "k_norm": False},
                                                      "q_a_proj": False, "norm": False}})
