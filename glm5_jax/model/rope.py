"""Rotary position embedding on interleaved pairs, as GLM-5 (and DeepSeek) lay it out.

The rope slice holds pairs (x0, x1), (x2, x3), ...; pair i rotates by angle pos * inv_freq[i].
The rotated result is written de-interleaved, [even parts | odd parts], which is what the
reference implementation produces. Queries and keys get the same permutation, so every dot
product equals the interleaved formulation's exactly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from glm5_jax.config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> tuple[np.ndarray, float]:
    """Per-pair inverse frequencies [rope_dim // 2] and the cos/sin scale (yarn's attention factor)."""
    dim = config.qk_rope_head_dim
    base = config.rope_theta
    exponents = np.arange(0, dim, 2, dtype=np.float32) / dim
    pos_freqs = np.power(np.float32(base), exponents).astype(np.float32)
    if config.rope_type == "default":
        return (1.0 / pos_freqs).astype(np.float32), 1.0
    # YaRN: blend interpolated and extrapolated frequencies with a linear ramp over pair index.
    factor = config.rope_factor
    original = config.rope_original_max_position_embeddings

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(config.rope_beta_fast)), 0)
    high = min(math.ceil(correction_dim(config.rope_beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = 1.0 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (1.0 / pos_freqs) * extrapolation_weight

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if config.rope_mscale and config.rope_mscale_all_dim:
        attention_factor = mscale(factor, config.rope_mscale) / mscale(factor, config.rope_mscale_all_dim)
    else:
        attention_factor = mscale(factor)
    return inv_freq.astype(np.float32), float(attention_factor)


def rope_angles(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin [batch, seq, rope_dim // 2] for integer positions [batch, seq]."""
    inv_freq, attention_factor = inverse_frequencies(config)
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    return jnp.cos(angles) * attention_factor, jnp.sin(angles) * attention_factor


def apply_interleaved_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [batch, seq, heads, rope_dim] by cos/sin [batch, seq, rope_dim // 2]."""
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return jnp.concatenate([even * cos - odd * sin, odd * cos + even * sin], axis=-1)
