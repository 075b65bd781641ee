"""``glm5_jax.generate``: batched generation with per-token log-probabilities.

Also runnable: ``python -m glm5_jax.generate --checkpoint DIR --prompt "..."`` (see __main__).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence

from glm5_jax.config import ModelConfig
from glm5_jax.sample.engine import Generation, run_batch
from glm5_jax.sample.stop import StopSpec


def generate(model, variables: dict, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
             stop: StopSpec = None, **options) -> list[Generation]:
    """Continue each prompt (a list of token ids); returns one ``Generation`` per prompt.

    ``Generation.token_ids`` are the new tokens (the EOS or stop-completing token included) and
    ``Generation.logprobs`` each one's log-probability under the sampling policy (temperature,
    top-k, top-p applied; for greedy, temperature 0, the model's own log-softmax).
    ``temperature=0`` is greedy; ``seed`` fixes sampling; ``stop`` is a string or a list of
    strings and/or token-id lists (strings need ``tokenizer=``). Options: ``eos_token_id``
    (default: the config's; None disables), ``tokenizer``, ``speculative_steps`` (MTP drafts
    per step; same output distribution), ``indexer_mode`` and ``mesh`` (sharded decode).
    ``model`` is a ``GLM5Model`` or its ``ModelConfig``.
    """
    config: ModelConfig = model if isinstance(model, ModelConfig) else model.config
    return run_batch(config, variables, prompts, max_new_tokens, temperature, top_p, top_k, seed, stop,
                     **options).generations


__all__ = ["Generation", "generate"]


class _CallableModule(types.ModuleType):
    """``glm5_jax.generate`` is both this package (``python -m glm5_jax.generate``) and, once
    imported, the attribute the parent package exposes; calling it calls ``generate``."""

    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
