"""The policy network of an RL run: its architecture, as learner, workers and evaluator build it.

Its weights travel from the learner to the workers shard by shard (``weight_sender``,
``weight_receiver``; ``local_weight_sync`` inside one process), not through files.
"""

from __future__ import annotations

import ml_collections

from glm5_jax.config import ModelConfig, get_preset
from glm5_jax.config_fields import set_fields


def policy_model_config(config: ml_collections.ConfigDict, vocab_size: int, bos_id: int,
                        eos_id: int, pad_id: int) -> ModelConfig:
    """The policy's architecture with the tokenizer's special ids: the preset named by
    ``config.model`` sized to the tokenizer's vocabulary, or, with ``config.init_from``, the
    checkpoint's own config (its vocabulary must hold every id the tokenizer makes)."""
    overrides = set_fields(config.get("model_overrides"))
    special = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    if config.get("init_from"):
        from glm5_jax.sample.checkpoint import load_model_config

        base = load_model_config(config.init_from)
        if vocab_size > base.vocab_size:
            raise ValueError(f"the tokenizer has {vocab_size} ids but init_from={config.init_from!r} "
                             f"embeds {base.vocab_size}: is it the checkpoint's own tokenizer?")
        return base.replace(**special, **overrides)
    return get_preset(config.model).replace(vocab_size=vocab_size, **special, **overrides)
