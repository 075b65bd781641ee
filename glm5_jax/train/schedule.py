"""Learning-rate schedule: linear warm-up, then cosine decay to a floor.

Why not ``optax.warmup_cosine_decay_schedule``: it starts at ``init_value`` on the first
update, so with init 0 the first step is wasted. Here update number n (0-based optimizer
count) gets peak * (n + 1) / warmup during warm-up.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.1) -> optax.Schedule:
    """lr(count): count = number of updates already applied (optax's convention)."""
    floor = peak * min_ratio
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = peak * jnp.minimum((count + 1.0) / max(warmup_steps, 1), 1.0)
        progress = jnp.clip((count + 1.0 - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(count + 1.0 <= warmup_steps, warm, cosine)

    return schedule
