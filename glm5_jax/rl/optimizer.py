"""The learner's optimizer: AdamW on trainable parameters, and a moment reset that keeps time.

The GLM-5 paper resets the optimizer state after each weight push (``reset_optimizer_on_push``).
What is reset is the *moments* (Adam's first and second moment estimates, which describe
gradients of a policy that no longer exists). The *step counts* are kept: every ``count`` leaf
of the optimizer state, Adam's (its bias correction) and any schedule's (its position in a
warm-up or decay). Re-initialising the whole state would restart a learning-rate schedule at
its warm-up on every push.

With the count kept, Adam's bias correction no longer undoes the zeroed moments: the first
update after a reset is lr * (1 - b1) / sqrt(1 - b2) * g / |g| per weight (exactly lr for the
tiny experiment's b1 = 0.9, b2 = 0.99), where a fresh state would move it by lr * g / |g|.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax


def _path_string(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def trainable_labels(params: Any, frozen_patterns: tuple[str, ...]) -> Any:
    """"frozen" for parameters whose path contains any pattern, else "trainable"."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if any(p in _path_string(path) for p in frozen_patterns)
        else "trainable", params)


def make_rl_optimizer(config: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
    """AdamW on trainable parameters (no decay on vectors: norms), zero updates on frozen ones."""
    decay_mask = jax.tree.map(lambda p: p.ndim >= 2, params)
    adamw = optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adamw(config.learning_rate, b1=config.adam_b1, b2=config.adam_b2,
                    eps=config.adam_eps, weight_decay=config.weight_decay, mask=decay_mask))
    labels = trainable_labels(params, tuple(config.frozen_params))
    return optax.multi_transform({"trainable": adamw, "frozen": optax.set_to_zero()}, labels)


def is_step_count(path) -> bool:
    """True for a ``count`` field of an optax state (Adam's step, a schedule's position)."""
    return bool(path) and getattr(path[-1], "name", None) == "count"


def reset_moments(optimizer: optax.GradientTransformation, opt_state: Any, params: Any) -> Any:
    """``opt_state`` with every moment as ``optimizer.init`` makes it and every count kept."""
    fresh = optimizer.init(params)
    return jax.tree_util.tree_map_with_path(
        lambda path, new, old: old if is_step_count(path) else new, fresh, opt_state)
