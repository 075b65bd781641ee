"""Sparse attention forms agree, and dynamic routing reduces to static top-k at k_min = k_max."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm5_jax.config import tiny
from glm5_jax.model import sparse_attention as sa
from glm5_jax.model.indexer import NO_KEY, index_scores, select_topk
from glm5_jax.model.router import Router, dynamic_keep_mask
from glm5_jax.model.attention_mask import attention_mask
from hf_reference import relative_error


@pytest.mark.parametrize("seq,topk,segments", [(24, 8, False), (40, 16, True), (12, 16, False)])
def test_gather_path_equals_masked_dense(seq, topk, segments):
    rng = np.random.RandomState(seq + topk)
    b, h, c, r, nope, v = 2, 3, 16, 8, 8, 12
    q_nope = rng.randn(b, seq, h, nope).astype(np.float32)
    q_rope = rng.randn(b, seq, h, r).astype(np.float32)
    latent = rng.randn(b, seq, c).astype(np.float32)
    k_rope = rng.randn(b, seq, r).astype(np.float32)
    kv_b = rng.randn(c, h, nope + v).astype(np.float32) / 4
    segment_ids = (np.arange(seq)[None] >= seq // 3).astype(np.int32).repeat(b, 0) + 1 if segments else None
    mask = attention_mask(seq, None if segment_ids is None else jnp.asarray(segment_ids), b).dense()
    q_idx = rng.randn(b, seq, 4, 8).astype(np.float32)
    k_idx = rng.randn(b, seq, 8).astype(np.float32)
    w_idx = rng.randn(b, seq, 4).astype(np.float32)
    chosen = select_topk(index_scores(q_idx, k_idx, w_idx, mask, 0.3), topk)
    if seq > topk:
        assert bool(jnp.any(chosen == NO_KEY)), "early queries have fewer than k keys"
    scale = 0.2
    # masked dense: expand the latent into per-head keys and values
    kv = jnp.einsum("btc,chd->bthd", latent, kv_b)
    keys = jnp.concatenate([kv[..., :nope], jnp.broadcast_to(k_rope[:, :, None], (b, seq, h, r))], -1)
    dense = sa.masked_dense_attention(jnp.concatenate([q_nope, q_rope], -1), keys, kv[..., nope:],
                                      mask & sa.selection_mask(chosen, seq), scale)
    q_latent = jnp.einsum("bshn,chn->bshc", q_nope, kv_b[..., :nope])
    for query_chunk in (512, 8):  # whole, and chunked over queries where 8 divides seq
        gathered = jnp.einsum("bshc,chv->bshv",
                              sa.gathered_latent_attention(q_latent, q_rope, latent, k_rope, chosen, scale,
                                                           query_chunk=query_chunk),
                              kv_b[..., nope:])
        assert relative_error(gathered, dense) <= 1e-5


def test_selection_never_crosses_documents_or_the_future():
    seq, b = 20, 1
    segment_ids = jnp.asarray([[1] * 7 + [2] * 13])
    mask = attention_mask(seq, segment_ids, b).dense()
    rng = np.random.RandomState(0)
    scores = index_scores(rng.randn(b, seq, 4, 8), rng.randn(b, seq, 8), rng.randn(b, seq, 4), mask, 1.0)
    chosen = np.asarray(select_topk(scores, 5))
    for t in range(seq):
        for s in chosen[0, t]:
            if s != NO_KEY:
                assert s <= t and segment_ids[0, s] == segment_ids[0, t]


def _route(config, x):
    router = Router(config)
    variables = router.init(jax.random.PRNGKey(1), x)
    variables = {"params": variables["params"],
                 "routing": {"e_score_correction_bias": 0.05 * jnp.arange(config.n_routed_experts, dtype=jnp.float32)}}
    return router.apply(variables, x)


def test_dynamic_routing_with_k_min_equal_k_max_is_static_topk():
    x = jnp.asarray(np.random.RandomState(0).randn(64, tiny().hidden_size), jnp.float32)
    static = tiny()
    dynamic = tiny().replace(router_mode="dynamic", router_k_min=2, router_k_max=2)
    w_s, ids_s, _ = _route(static, x)
    w_d, ids_d, _ = _route(dynamic, x)
    np.testing.assert_array_equal(ids_s, ids_d)
    np.testing.assert_allclose(w_s, w_d, rtol=1e-6)


def test_dynamic_routing_varies_expert_count_within_bounds():
    x = jnp.asarray(3 * np.random.RandomState(1).randn(256, tiny().hidden_size), jnp.float32)
    config = tiny().replace(router_mode="dynamic", router_k_min=1, router_k_max=4, router_score_threshold=0.6)
    weights, ids, _ = _route(config, x)
    active = np.asarray(ids < config.n_routed_experts).sum(-1)
    assert active.min() >= 1 and active.max() <= 4
    assert len(np.unique(active)) > 1, "the count should depend on the token"
    # dropped slots carry no weight; kept weights are renormalised to routed_scaling_factor
    assert np.all(np.asarray(weights)[np.asarray(ids) == config.n_routed_experts] == 0)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), config.routed_scaling_factor, rtol=1e-5)


def test_keep_mask_hand_computed():
    weights = jnp.asarray([[0.5, 0.3, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    keep = dynamic_keep_mask(weights, k_min=1, threshold=0.7)
    # row 0: mass before slots = 0, .5, .8, .9 -> keep first two; row 1: 0, .25, .5, .75 -> three
    np.testing.assert_array_equal(keep, [[True, True, False, False], [True, True, True, False]])


def test_selection_mask_scatter_equals_the_one_hot_definition():
    from glm5_jax.model.sparse_attention import selection_mask

    rng = np.random.RandomState(0)
    topk = rng.randint(-1, 20, size=(2, 7, 5)).astype(np.int32)  # -1 = NO_KEY, repeats allowed
    want = np.zeros((2, 7, 20), bool)
    for b, s, j in np.ndindex(*topk.shape):
        if topk[b, s, j] >= 0:
            want[b, s, topk[b, s, j]] = True
    np.testing.assert_array_equal(selection_mask(jnp.asarray(topk), 20), want)


@pytest.mark.parametrize("topk,block,segments", [(8, 16, False), (24, 8, True), (64, 16, True)])
def test_blockwise_running_topk_equals_top_k_over_whole_rows(topk, block, segments):
    """Order included, ties too: scores are rounded to a coarse grid so many keys tie."""
    from glm5_jax.model.indexer import blockwise_topk

    rng = np.random.RandomState(topk + block)
    b, s, hi, d = 2, 48, 3, 8
    q = jnp.asarray(np.round(rng.randn(b, s, hi, d)), jnp.float32)
    k = jnp.asarray(np.round(rng.randn(b, s, d)), jnp.float32)
    w = jnp.asarray(np.round(rng.randn(b, s, hi)), jnp.float32)
    segment_ids = jnp.asarray((np.arange(s)[None] >= 20).astype(np.int32).repeat(b, 0) + 1) if segments else None
    mask = attention_mask(s, segment_ids, b)
    want = select_topk(index_scores(q, k, w, mask.dense(), 0.5), topk)
    got = blockwise_topk(q, k, w, mask, 0.5, topk, key_block=block)
    assert int(jnp.sum(want == NO_KEY)) > 0  # early queries have fewer than k keys
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("blocks,segments", [((8, 8), False), ((16, 8), True), ((8, 32), True)])
def test_blockwise_attention_equals_masked_dense_values_and_gradients(blocks, segments):
    from glm5_jax.model.blockwise_attention import blockwise_attention

    rng = np.random.RandomState(sum(blocks))
    b, s, h, d, dv = 2, 32, 3, 8, 6
    q, k = (jnp.asarray(rng.randn(b, s, h, d) * 2, jnp.float32) for _ in range(2))
    v = jnp.asarray(rng.randn(b, s, h, dv), jnp.float32)
    segment_ids = jnp.asarray((np.arange(s)[None] >= 13).astype(np.int32).repeat(b, 0) + 1) if segments else None
    mask = attention_mask(s, segment_ids, b)
    cotangent = jnp.asarray(rng.randn(b, s, h, dv), jnp.float32)

    def run(fn, mask):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, mask, 0.3), q, k, v)
        return out, vjp(cotangent)

    want, want_grads = run(sa.masked_dense_attention, mask.dense())
    got, got_grads = run(lambda *a: blockwise_attention(*a, query_block=blocks[0], key_block=blocks[1]), mask)
    assert relative_error(got, want) <= 1e-5
    for g, w in zip(got_grads, want_grads):
        assert relative_error(g, w) <= 1e-5


def test_attention_mask_blocks_and_rows_equal_the_dense_mask():
    """Causal by index and within a document: every tile, sampled row set and the whole
    matrix agree with a numpy restatement."""
    segment_ids = np.asarray([[1] * 5 + [2] * 7 + [3] * 4, [7] * 16], np.int32)
    mask = attention_mask(16, jnp.asarray(segment_ids), 2)
    i, j = np.arange(16)[:, None], np.arange(16)[None, :]
    want = (j <= i)[None] & (segment_ids[:, :, None] == segment_ids[:, None, :])
    np.testing.assert_array_equal(mask.dense(), want)
    for q0, ql, k0, kl in [(0, 4, 0, 4), (4, 8, 0, 8), (8, 8, 8, 8), (12, 4, 4, 8)]:
        tile = jax.jit(mask.block, static_argnums=(1, 3))(jnp.int32(q0), ql, jnp.int32(k0), kl)
        np.testing.assert_array_equal(tile, want[:, q0:q0 + ql, k0:k0 + kl])
    rows = np.asarray([0, 5, 11, 15])
    np.testing.assert_array_equal(mask.rows(rows), want[:, rows])
    unpacked = attention_mask(16, None, 2).dense()
    np.testing.assert_array_equal(unpacked, np.broadcast_to(j <= i, (2, 16, 16)))


def test_query_chunks_stay_on_their_context_shard():
    """With the sequence split over ``context``, each map step takes one chunk of every
    shard: same result as without a mesh, and the compiled loop moves no data (before, the
    stacked chunks were all-gathered at every step)."""
    from jax.sharding import NamedSharding, PartitionSpec

    from glm5_jax.sharding import make_mesh

    rng = np.random.RandomState(3)
    x = jnp.asarray(rng.randn(2, 64, 3), jnp.float32)
    w = jnp.asarray(rng.randn(3, 5), jnp.float32)
    fn = lambda pieces: jnp.tanh(pieces[0] @ w) * jnp.sum(pieces[0], -1, keepdims=True)  # noqa: E731
    want = fn((x,))
    mesh = make_mesh("context=4,data=2", jax.devices()[:8])
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data", "context")))
    chunked = jax.jit(lambda x: sa.map_query_chunks(fn, (x,), 8))
    with jax.set_mesh(mesh):
        got = chunked(sharded)
        text = chunked.lower(sharded).compile().as_text()
    assert relative_error(got, want) <= 1e-6
    assert "all-gather" not in text and "all-to-all" not in text
    np.testing.assert_allclose(sa.map_query_chunks(fn, (x,), 8), want, rtol=1e-6)  # no mesh
