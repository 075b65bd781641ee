"""The DSA indexer loss: KL arithmetic, stage 1 (only the indexer learns, its KL falls, every
other parameter stays bit-identical) and stage 2 (the KL's gradient reaches nothing but
the indexer)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from glm5_jax.config import tiny
from glm5_jax.model.attention import MLAttention
from glm5_jax.model.rope import rope_angles
from glm5_jax.model.attention_mask import attention_mask
from glm5_jax.sharding import activate
from glm5_jax.train.experiment import DENSE, DENSE_WARMUP, SPARSE, STAGES, stage_at
from glm5_jax.train.indexer_loss import (
    dense_layer_terms,
    kl_to_indexer,
    layer_indexer_terms,
    sparse_stage_terms,
)
from glm5_jax.train.run_setup import build_run
from glm5_jax.train.testing import TEST_TOTAL_STEPS, cpu_test_config, write_test_corpus
from glm5_jax.train.train_step import make_train_step

ATTENTION_SCALE_UP = 4.0  # sharpens the initial attention so the indexer has a gap to close
STEPS = 8


def _two_document_batch(batch: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
    """Two documents per row, so the same-document mask matters."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, vocab, (batch, seq + 1))
    first = seq * 5 // 8
    index = np.arange(seq)
    return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
            "segment_ids": np.repeat(np.where(index < first, 1, 2)[None], batch, 0).astype(np.int32),
            "positions": np.repeat(np.where(index < first, index, index - first)[None], batch, 0).astype(np.int32),
            "loss_mask": np.ones((batch, seq), np.float32)}


def _sharpen_attention(params):
    """Scale the query/key projections (not the indexer): attention logits grow ~16x."""
    flat = traverse_util.flatten_dict(params)
    for path in flat:
        module = path[-2] if len(path) > 1 else None
        if "indexer" not in path and module in ("q_b_proj", "kv_b_proj", "kv_a_proj_with_mqa"):
            flat[path] = flat[path] * ATTENTION_SCALE_UP
    return traverse_util.unflatten_dict(flat)


def test_stage1_trains_only_the_indexer_and_its_kl_falls(tmp_path):
    """STEPS stage-1 updates of the CPU-test model on one batch, on one device: the KL falls
    every step, every parameter outside the indexers and the routing biases stay bit for bit,
    the frozen model's LM loss cannot move; a non-finite step changes nothing but counters."""
    config = cpu_test_config(write_test_corpus(tmp_path / "corpus"), tmp_path / "data",
                             dense_warmup_steps=TEST_TOTAL_STEPS, warmup_steps=0, learning_rate=1e-2)
    assert stage_at(config, 1) == DENSE_WARMUP
    run = build_run(config, jax.devices()[:1])
    with activate(run.mesh):
        state = run.init_state()  # the loop test's init program
        state = state.replace(params=_sharpen_attention(state.params))
        initial = jax.device_get(state)
        batch = run.to_device(_two_document_batch(config.batch_size, config.seq_len,
                                                  run.model_config.vocab_size))
        history = []
        for _ in range(STEPS):  # the step donates its input state
            state, metrics = run.step_fn(DENSE_WARMUP)(state, batch)
            history.append(jax.device_get(metrics))
        final = jax.device_get(state)

        # A NaN in a trained parameter makes the loss NaN: the step must change nothing.
        params = jax.tree.map(np.array, initial.params)
        params["dense_layers"]["block"]["layer_0"]["self_attn"]["indexer"]["wq_b"]["kernel"][0, 0, 0, 0] = np.nan
        poisoned = initial.replace(params=params)
        after, poisoned_metrics = run.step_fn(DENSE_WARMUP)(jax.device_put(poisoned, run.shardings), batch)
        after = jax.device_get(after)

    kl = [float(m["indexer_kl"]) for m in history]
    assert kl[0] > 1e-3, kl  # a real gap to close
    assert kl[-1] < 0.7 * kl[0], kl
    assert all(b < a for a, b in itertools.pairwise(kl)), kl
    assert all(bool(m["step_applied"]) for m in history)
    assert len({float(m["ce_loss"]) for m in history}) == 1  # same batch, frozen model

    before, now = traverse_util.flatten_dict(initial.params), traverse_util.flatten_dict(final.params)
    changed_indexer = 0
    for path, value in before.items():
        if "indexer" in path:
            changed_indexer += int(not np.array_equal(value, now[path]))
        else:
            np.testing.assert_array_equal(now[path], value, err_msg="/".join(path))
    assert changed_indexer > 0
    jax.tree.map(np.testing.assert_array_equal, final.routing, initial.routing)

    assert not bool(poisoned_metrics["step_applied"])
    assert (int(after.skipped_steps), int(after.step)) == (1, 1)
    for new, old in ((after.params, poisoned.params), (after.opt_state, poisoned.opt_state),
                     (after.routing, poisoned.routing)):
        jax.tree.map(np.testing.assert_array_equal, new, old)


def test_kl_is_zero_at_the_target_and_positive_elsewhere():
    allowed = jnp.asarray([[[True, True, True, False]]])
    target = jnp.asarray([[[0.5, 0.25, 0.25, 0.0]]])
    matching = jnp.log(target[..., :3])
    scores = jnp.concatenate([matching + 3.0, jnp.full((1, 1, 1), -jnp.inf)], -1)  # shift-invariant
    np.testing.assert_allclose(kl_to_indexer(target, scores, allowed), 0.0, atol=1e-6)
    other = jnp.asarray([[[0.0, 0.0, 0.0, -jnp.inf]]])
    expected = float(jnp.sum(target[..., :3] * jnp.log(target[..., :3] * 3)))
    np.testing.assert_allclose(kl_to_indexer(target, other, allowed), expected, rtol=1e-6)
    grad = jax.grad(lambda s: kl_to_indexer(target, s, allowed).sum())(other)
    assert np.all(np.isfinite(grad[..., :3])) and grad[..., 3] == 0


def test_stage2_kl_trains_only_the_indexer():
    """Gradient of the sparse-stage KL w.r.t. one layer's attention parameters: non-zero on
    the indexer, exactly zero on everything else (its inputs and target are detached)."""
    model_config = tiny()
    batch = _two_document_batch(2, 32, model_config.vocab_size)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 32, model_config.hidden_size))
    cos, sin = rope_angles(model_config, jnp.asarray(batch["positions"]))
    mask = attention_mask(32, jnp.asarray(batch["segment_ids"]), 2)
    attention = MLAttention(model_config, runs_indexer=True)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(
        attention.init(jax.random.PRNGKey(0), x, cos, sin, mask, None)))["params"]
    rng = np.random.default_rng(0)  # values need not follow the model's init: no init to compile
    attn_params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.1, s.shape), s.dtype), shapes)

    def kl(params):
        total, _, _ = layer_indexer_terms(model_config, SPARSE, params, x, cos, sin, mask, batch["loss_mask"])
        return total

    grads = traverse_util.flatten_dict(jax.device_get(jax.jit(jax.grad(kl))(attn_params)))
    for path, grad in grads.items():
        if path[0] != "indexer":
            assert not np.any(grad), "/".join(path)
    assert np.any(grads[("indexer", "wq_b", "kernel")])


def test_stage_schedule_and_every_stage_traces(tmp_path):
    """dense_steps, then dense_warmup_steps, then sparse; each stage's step traces to the same
    state structure (tracing only: the dense stage is compiled by the main job)."""
    config = cpu_test_config(write_test_corpus(tmp_path / "corpus"), tmp_path / "data",
                             dense_steps=2, dense_warmup_steps=1)
    assert [stage_at(config, step) for step in range(1, 6)] == [DENSE, DENSE, DENSE_WARMUP, SPARSE, SPARSE]
    run = build_run(config, jax.devices()[:1])
    batch = {k: jax.ShapeDtypeStruct((config.batch_size, config.seq_len), v.dtype)
             for k, v in _two_document_batch(1, 1, 3).items()}
    with activate(run.mesh):
        for stage in STAGES:
            state, metrics = jax.eval_shape(make_train_step(run.model_config, config, run.optimizer,
                                                            run.schedule, stage), run.abstract_state, batch)
            assert jax.tree.structure(state) == jax.tree.structure(run.abstract_state), stage
            assert {"loss", "ce_loss", "indexer_kl", "indexer_recall"} <= metrics.keys()


def test_gathered_sparse_stage_equals_the_dense_reference():
    """The sparse stage's KL and recall from the k selected keys (query chunks, running
    top-k) equal the [b, h, s, t] reference, value and indexer gradient."""
    model_config = tiny()  # index_topk 16 < 32 keys: the selection matters
    batch = _two_document_batch(2, 32, model_config.vocab_size)
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 32, model_config.hidden_size))
    cos, sin = rope_angles(model_config, jnp.asarray(batch["positions"]))
    mask = attention_mask(32, jnp.asarray(batch["segment_ids"]), 2)
    weight = jnp.asarray(np.random.default_rng(1).uniform(0.5, 1.0, (2, 32)), jnp.float32)
    attention = MLAttention(model_config, runs_indexer=True)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(
        attention.init(jax.random.PRNGKey(0), x, cos, sin, mask, None)))["params"]
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), s.dtype), shapes)

    def reference(p):
        return dense_layer_terms(model_config, SPARSE, p, x, cos, sin, mask, weight)

    def gathered(p):
        return nn.apply(sparse_stage_terms, attention)({"params": p}, x, cos, sin, mask, weight,
                                                        query_chunk=8)

    (ref_kl, ref_recall), (kl, recall, recall_weight) = reference(params), gathered(params)
    assert float(ref_kl) > 0 and 0 < float(ref_recall) < float(jnp.sum(weight))
    np.testing.assert_allclose(kl, ref_kl, rtol=1e-5)
    np.testing.assert_allclose(recall, ref_recall, rtol=1e-5)
    np.testing.assert_allclose(recall_weight, jnp.sum(weight), rtol=1e-5)  # float32 sums, two orders
    ref_grad = jax.grad(lambda p: reference(p)[0])(params)["indexer"]
    grad = jax.grad(lambda p: gathered(p)[0])(params)["indexer"]
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grad), jax.tree_util.tree_leaves(ref_grad)):
        # float32 1e-5, relative to the leaf's scale: entries near zero carry the rounding of
        # the sums they come from, not of themselves.
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(r))),
                                   err_msg=jax.tree_util.keystr(path))
