"""Inference: latent KV cache, prefill/decode with DSA, sampling with logprobs, MTP speculation.

Entry points: ``glm5_jax.generate(...)`` (list of ``Generation``), ``run_batch`` (the same
plus decode statistics) and ``ContinuousBatcher`` (requests join and leave a running batch;
weights swappable between decode steps, recorded per token). The compiled pieces (``prefill``,
``decode_loop``) and the cached model (``CachedGLM5``) are importable for custom loops.
"""

from glm5_jax.sample.cache import (
    cache_bytes_per_token,
    full_kv_bytes_per_token,
    init_cache,
)
from glm5_jax.sample.cached_model import CachedGLM5
from glm5_jax.sample.continuous import Completion, ContinuousBatcher, Request
from glm5_jax.sample.decode import DecodeState, decode_loop, prefill
from glm5_jax.sample.engine import BatchResult, Generation, run_batch
from glm5_jax.sample.sampling import Policy, PolicyKind, make_policy

__all__ = [
    "BatchResult", "CachedGLM5", "Completion", "ContinuousBatcher", "DecodeState", "Generation", "Policy",
    "PolicyKind", "Request", "cache_bytes_per_token", "decode_loop", "full_kv_bytes_per_token", "init_cache",
    "make_policy", "prefill", "run_batch",
]
