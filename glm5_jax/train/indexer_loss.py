"""The DSA lightning indexer's training loss, and its recall against dense attention.

The indexer's top-k selection is not differentiable, so the language-model loss never
reaches it; it learns by distillation from the main attention (DeepSeek-V3.2, GLM-5):

* target p_t: the main attention distribution of query t, summed over heads and
  L1-normalised (here: the mean over heads of each head's softmax);
* stage 1, dense warm-up: attention is dense, every other parameter is frozen, and the loss
  is KL(p_t || softmax(I_t)) over all keys t may attend to;
* stage 2, sparse adaptation: attention is restricted to the indexer's top-k set S_t, and
  the loss is KL(p_t,S || softmax(I_t,S)) over S_t only, with the indexer's inputs detached
  so this loss trains the indexer and nothing else;
* before DSA ("dense" stage: dense pretraining, everything trains) the indexer already
  learns the stage-1 loss, inputs detached, so it starts stage 1 from a useful point.

The model does not return its attention distributions or index scores, so this module
recomputes them from the parameters: the training forward pass captures each layer's
attention input (the output of ``input_layernorm``), and the layer's ``MLAttention``
sub-modules are re-applied to it with ``nn.apply`` on that layer's parameter sub-tree. The
target is always detached (the attention is not trained to please the indexer).

Recall: the fraction of the dense attention's top-k keys (by p_t) that the indexer's top-k
contains, per query, averaged like the loss. 1.0 whenever a query has at most k keys.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from glm5_jax.config import ModelConfig
from glm5_jax.model.attention import MLAttention
from glm5_jax.model.attention_mask import AttentionMask
from glm5_jax.model.indexer import NO_KEY, blockwise_topk, index_scores, select_topk
from glm5_jax.model.sparse_attention import gather_keys, map_query_chunks, selection_mask
from glm5_jax.train.experiment import SPARSE

ATTENTION_INPUT = ("input_layernorm", "__call__")
QUERY_CHUNK = 512  # queries per step of the sparse stage's gathered KL
RECALL_QUERIES = 256  # queries per row the recall metric is measured on  # what the train step's capture filter keeps


def _attention_logits_and_index_scores(attn: MLAttention, x: jax.Array, cos: jax.Array,
                                       sin: jax.Array, mask: jax.Array):
    """Main attention logits [b, h, s, t] (float32, scaled) and index scores [b, s, t];
    ``mask`` is the dense [b, s, t] boolean.

    Mirrors MLAttention's masked-dense path; the indexer sees its inputs detached.
    """
    c = attn.config
    nope, rope = c.qk_nope_head_dim, c.qk_rope_head_dim
    q_resid, q_nope, q_rope, latent, k_rope = attn.project(x, cos, sin)
    q = jnp.concatenate([q_nope, q_rope], axis=-1)
    kv = attn.kv_b_proj(latent)  # [b, t, h, nope + v]
    k = jnp.concatenate([kv[..., :nope], jnp.broadcast_to(k_rope[:, :, None], kv.shape[:3] + (rope,))],
                        axis=-1)
    logits = jnp.einsum("bshd,bthd->bhst", q, k).astype(jnp.float32) * c.attention_scale

    index_q, index_k, weights = attn.indexer.queries_keys_weights(
        jax.lax.stop_gradient(x), jax.lax.stop_gradient(q_resid), cos, sin)
    scores = index_scores(index_q, index_k, weights, mask, c.index_head_dim**-0.5)
    return logits, scores


def head_mean_attention(logits: jax.Array, allowed: jax.Array) -> jax.Array:
    """Mean over heads of softmax over the allowed keys. logits [b, h, s, t] -> [b, s, t]."""
    masked = jnp.where(allowed[:, None], logits, jnp.finfo(jnp.float32).min)
    return jnp.mean(jax.nn.softmax(masked, axis=-1), axis=1)


def kl_to_indexer(target: jax.Array, scores: jax.Array, allowed: jax.Array) -> jax.Array:
    """KL(target || softmax(scores over allowed keys)) per query [b, s]; 0 log 0 = 0."""
    log_q = jax.nn.log_softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1)
    log_q = jnp.where(allowed, log_q, 0.0)
    positive = allowed & (target > 0)
    log_p = jnp.log(jnp.where(positive, target, 1.0))
    return jnp.sum(jnp.where(positive, target * (log_p - log_q), 0.0), axis=-1)


def layer_indexer_terms(config: ModelConfig, stage: str, attn_params: Any, x: jax.Array,
                        cos: jax.Array, sin: jax.Array, mask: AttentionMask,
                        query_weight: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum of weighted per-query KL, sum of weighted recall, the weight recall was taken
    over) for one layer. The sparse stage runs gathered (``sparse_stage_terms``); the dense
    stages, whose target spans every key, run dense (``dense_layer_terms``)."""
    if stage == SPARSE:
        return nn.apply(sparse_stage_terms, MLAttention(config, runs_indexer=True))(
            {"params": attn_params}, jax.lax.stop_gradient(x), cos, sin, mask, query_weight)
    kl, recall = dense_layer_terms(config, stage, attn_params, x, cos, sin, mask, query_weight)
    return kl, recall, jnp.sum(query_weight)


def dense_layer_terms(config: ModelConfig, stage: str, attn_params: Any, x: jax.Array,
                      cos: jax.Array, sin: jax.Array, mask: AttentionMask,
                      query_weight: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted per-query KL, sum of weighted per-query recall), from the whole
    [b, h, s, t] attention: the reference for every stage, the implementation for the dense
    ones (O(s * t) per layer; GLM-5 trains dense only at short context)."""
    mask = mask.dense()
    logits, scores = nn.apply(_attention_logits_and_index_scores, MLAttention(config, runs_indexer=True))(
        {"params": attn_params}, jax.lax.stop_gradient(x), cos, sin, mask)
    logits = jax.lax.stop_gradient(logits)
    kv_len = x.shape[1]
    dense_target = head_mean_attention(logits, mask)
    indexer_selected = selection_mask(select_topk(scores, config.index_topk), kv_len) & mask
    if stage == SPARSE:
        kl = kl_to_indexer(head_mean_attention(logits, indexer_selected), scores, indexer_selected)
    else:  # attention is dense: distil all of it
        kl = kl_to_indexer(dense_target, scores, mask)
    dense_top = select_topk(jnp.where(mask, dense_target, -jnp.inf), config.index_topk)
    dense_selected = selection_mask(dense_top, kv_len)
    hits = jnp.sum(dense_selected & indexer_selected, axis=-1)
    recall = hits / jnp.maximum(jnp.sum(dense_selected, axis=-1), 1)
    return jnp.sum(kl * query_weight), jnp.sum(recall * query_weight)


def sparse_stage_terms(attn: MLAttention, x: jax.Array, cos: jax.Array, sin: jax.Array,
                       mask: AttentionMask, query_weight: jax.Array, query_chunk: int = QUERY_CHUNK,
                       recall_queries: int = RECALL_QUERIES):
    """Stage 2 without any [s, t] matrix: the indexer's top-k by running top-k, then per
    query chunk the main attention's logits and the index scores at the k selected keys only
    (absorbed MLA, as the gather attention path). Recall needs the dense attention's top-k,
    so it is measured on ``recall_queries`` evenly spaced queries (all of them when s is no
    longer). Equals ``dense_layer_terms`` (tests/test_train_indexer_loss.py)."""
    c = attn.config
    nope = c.qk_nope_head_dim
    b, s = x.shape[:2]
    q_resid, q_nope, q_rope, latent, k_rope = attn.project(x, cos, sin)
    kv_b = jnp.asarray(attn.kv_b_proj.kernel, q_nope.dtype)
    q_latent = jnp.einsum("bshn,chn->bshc", q_nope, kv_b[..., :nope])
    index_q, index_k, weights = attn.indexer.queries_keys_weights(
        x, jax.lax.stop_gradient(q_resid), cos, sin)
    index_scale = c.index_head_dim**-0.5
    topk = jax.lax.stop_gradient(blockwise_topk(
        jax.lax.stop_gradient(index_q), jax.lax.stop_gradient(index_k),
        jax.lax.stop_gradient(weights), mask, index_scale, c.index_topk))

    def chunk_kl(args):
        q_latent_c, q_rope_c, index_q_c, weights_c, topk_c = args
        valid = topk_c != NO_KEY  # [b, sc, k]
        logits = (jnp.einsum("bskc,bshc->bskh", gather_keys(latent, topk_c), q_latent_c)
                  + jnp.einsum("bskr,bshr->bskh", gather_keys(k_rope, topk_c), q_rope_c)
                  ).astype(jnp.float32) * c.attention_scale
        probs = jax.nn.softmax(jnp.where(valid[..., None], logits, jnp.finfo(jnp.float32).min), axis=-2)
        target = jax.lax.stop_gradient(jnp.mean(probs, axis=-1))  # [b, sc, k]
        dots = jnp.einsum("bshd,bskd->bshk", index_q_c, gather_keys(index_k, topk_c))
        scores = jnp.einsum("bsh,bshk->bsk", weights_c, jax.nn.relu(dots * index_scale))
        return kl_to_indexer(target, scores, valid)

    kl = map_query_chunks(chunk_kl, (q_latent, q_rope, index_q, weights, topk), query_chunk)

    sampled = np.unique(np.linspace(0, s - 1, min(s, recall_queries)).round().astype(np.int32))
    dense_logits = (jnp.einsum("bshc,btc->bhst", q_latent[:, sampled], latent)
                    + jnp.einsum("bshr,btr->bhst", q_rope[:, sampled], k_rope)
                    ).astype(jnp.float32) * c.attention_scale
    rows_mask = mask.rows(sampled)
    # Only the ranking matters here: sum over heads of exp(logit - logsumexp), the head-mean
    # attention times h, without the softmax's division (libtpu fused that division with the
    # head reduction into a [b, queries, t] tile that overflowed VMEM at 4K).
    masked = jnp.where(rows_mask[:, None], jax.lax.stop_gradient(dense_logits), jnp.finfo(jnp.float32).min)
    lse = jax.nn.logsumexp(masked, axis=-1, keepdims=True)
    dense_target = jnp.sum(jnp.exp(masked - lse), axis=1)
    dense_top = select_topk(jnp.where(rows_mask, dense_target, -jnp.inf), c.index_topk)
    hits = jnp.sum(selection_mask(dense_top, s) & selection_mask(topk[:, sampled], s), axis=-1)
    recall = hits / jnp.maximum(jnp.sum(dense_top != NO_KEY, axis=-1), 1)
    recall_weight = query_weight[:, sampled]
    return (jnp.sum(kl * query_weight), jnp.sum(recall * recall_weight), jnp.sum(recall_weight))


def _subtree(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def indexer_loss_and_recall(config: ModelConfig, stage: str, params: Any, intermediates: Any,
                            cos: jax.Array, sin: jax.Array, mask: AttentionMask,
                            loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean indexer KL and recall over every layer that runs an indexer (MTP layers included)
    and every real query token. ``intermediates`` is the train forward's captured collection."""
    weight = loss_mask.astype(jnp.float32)
    tokens = jnp.maximum(jnp.sum(weight), 1.0)
    layer_params, layer_inputs = [], []
    for path, calls in traverse_util.flatten_dict(intermediates).items():
        if path[-2:] != ATTENTION_INPUT:
            continue
        attn_params = _subtree(params, path[:-2] + ("self_attn",))
        if "indexer" not in attn_params:
            continue  # a "shared" layer reuses the previous full layer's selection
        for x in calls:  # several calls: an MTP module shared over its steps
            if x.ndim == 3:  # an unscanned layer: give it the scanned stacks' leading axis
                layer_params.append(jax.tree.map(lambda p: p[None], attn_params))
                layer_inputs.append(x[None])
            else:  # a scanned stack: [layers, b, s, d] beside stacked params
                layer_params.append(attn_params)
                layer_inputs.append(x)
    if not layer_inputs:
        return jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32)

    # Every indexer layer has the same parameter shapes, so all of them run as one loop
    # (one copy of the recomputation in the compiled program, whatever the depth).
    stacked_params = jax.tree.map(lambda *p: jnp.concatenate(p), *layer_params)
    stacked_inputs = jnp.concatenate([x.astype(layer_inputs[0].dtype) for x in layer_inputs])

    # Rematerialised: the map's backward recomputes one layer's scores at a time instead of
    # keeping every layer's [b, s, t] residuals alive together.
    @jax.checkpoint
    def one_layer(args):
        attn_params, x = args
        with jax.named_scope("indexer_loss"):  # its ops' names say what they are (plan/hlo_flops)
            return layer_indexer_terms(config, stage, attn_params, x, cos, sin, mask, weight)

    kls, recalls, recall_weights = jax.lax.map(one_layer, (stacked_params, stacked_inputs))
    layers = stacked_inputs.shape[0]
    return jnp.sum(kls) / (layers * tokens), jnp.sum(recalls) / jnp.maximum(jnp.sum(recall_weights), 1.0)
