"""Sampling for rollouts through the inference API (``glm5_jax.generate``).

Two things are added on top of ``generate``: batches are padded to a fixed number of rows
(repeating the last prompt) so every call reuses one compiled program, and generations come
back as plain (token ids, log-probs) pairs, exactly as sampled. The log-probs are those of the
sampling policy; with ``temperature`` != 1 the learner scales its logits the same way, and
top-k / top-p truncation is refused because the learner could not reproduce it token by token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from glm5_jax.config import ModelConfig


class PolicySampler:
    def __init__(self, model_config: ModelConfig, batch_rows: int, max_new_tokens: int,
                 temperature: float = 1.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0 for RL (greedy has no "
                             "distribution to correct against)")
        self.model_config = model_config
        self.batch_rows = batch_rows
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature

    def sample(self, variables: dict[str, Any], prompts: Sequence[Sequence[int]],
               seed: int) -> list[tuple[list[int], list[float]]]:
        from glm5_jax.generate import generate

        out: list[tuple[list[int], list[float]]] = []
        for start in range(0, len(prompts), self.batch_rows):
            chunk = list(prompts[start:start + self.batch_rows])
            real = len(chunk)
            chunk += [chunk[-1]] * (self.batch_rows - real)
            generations = generate(self.model_config, variables, chunk, self.max_new_tokens,
                                   temperature=self.temperature, seed=seed + start)
            out += [(list(g.token_ids), list(g.logprobs)) for g in generations[:real]]
        return out
