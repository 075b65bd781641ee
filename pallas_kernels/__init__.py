"""Pallas kernels for GLM-5's sparse hot spots, each beside its pure-jnp reference.

  grouped_matmul.grouped_matmul / grouped_matmul_reference         dropless MoE experts
  sparse_attention.sparse_topk_attention / ..._reference           DSA top-k attention
  indexer_scores.indexer_scores / indexer_scores_reference         lightning indexer
  indexer_scores.select_topk                                       scores -> top-k slots
  sharded.sharded_*                                                shard_map wrappers
  block_sizes                                                      per-backend defaults
  poison.poisoned_outputs                                          NaN-fill for tests

Every kernel takes ``backend`` ("tpu" | "gpu" | "cpu", None = jax.default_backend())
and ``interpret`` (None = interpret when running on cpu). This package imports nothing
from glm5_jax; importing it is cheap (submodules load on use).
"""
