"""Sampling for rollouts: batch-synchronous (``glm5_jax.generate``) or continuous batching.

Both return generations as plain (token ids, log-probs) pairs, exactly as sampled, and both draw
prompt ``j`` of ``sample(variables, prompts, seed)`` as request ``(seed, j)`` (its key depends on
that pair and the token index only), so they give the same tokens for the same call.

* ``PolicySampler`` pads each batch to a fixed number of rows (repeating the last prompt) so
  every call reuses one compiled program; a batch runs until its longest row is done.
* ``ContinuousPolicySampler`` holds a ``ContinuousBatcher``: a fixed set of slots that requests
  join and leave between decode steps, with weights swappable between steps.
  ``glm5_jax.rl.continuous_rollout`` drives it directly (episodes enter as soon as their
  previous turn's verdict is back; new weights take over mid-generation, recorded per token).

The log-probs are those of the sampling policy; with ``temperature`` != 1 the learner scales
its logits the same way, and top-k / top-p truncation is refused because the learner could not
reproduce it token by token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections

from glm5_jax.config import ModelConfig

SAMPLER_KINDS = ("batch", "continuous")


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 for RL (greedy has no "
                         "distribution to correct against)")


class PolicySampler:
    def __init__(self, model_config: ModelConfig, batch_rows: int, max_new_tokens: int,
                 temperature: float = 1.0, mesh=None) -> None:
        _check_temperature(temperature)
        self.mesh = mesh  # the worker's devices: rows over its batch axes, weights by the rules
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
                                   temperature=self.temperature, seed=seed, first_request=start,
                                   mesh=self.mesh)
            out += [(list(g.token_ids), list(g.logprobs)) for g in generations[:real]]
        return out


class ContinuousPolicySampler:
    """``slots`` concurrent requests of up to ``max_context`` prompt tokens each."""

    def __init__(self, model_config: ModelConfig, slots: int, max_new_tokens: int, max_context: int,
                 temperature: float = 1.0, steps_per_call: int = 4, recompute_on_update: bool = True,
                 mesh=None) -> None:
        from glm5_jax.sample.continuous import ContinuousBatcher

        _check_temperature(temperature)
        self.max_new_tokens = max_new_tokens
        self.batcher = ContinuousBatcher(model_config, slots, max_context + max_new_tokens, temperature,
                                         steps_per_call=steps_per_call, recompute_on_update=recompute_on_update,
                                         mesh=mesh)
        self._compiled = False

    def use(self, variables: dict[str, Any], version: int) -> None:
        """Decode with these weights from the next step on (the batcher records the version)."""
        self.batcher.set_weights(variables, version)
        if not self._compiled:  # every prompt bucket and the decode step, before any timing
            self.batcher.warm_up()
            self._compiled = True

    def request(self, prompt: Sequence[int], seed: int, index: int, tag: Any = None):
        from glm5_jax.sample.continuous import Request

        return Request(list(prompt), self.max_new_tokens, seed=seed, index=index, tag=tag)

    def sample(self, variables: dict[str, Any], prompts: Sequence[Sequence[int]],
               seed: int) -> list[tuple[list[int], list[float]]]:
        self.use(variables, self.batcher.version)
        completions = self.batcher.run([self.request(p, seed, j) for j, p in enumerate(prompts)])
        return [(c.token_ids, c.logprobs) for c in completions]


def make_sampler(config: ml_collections.ConfigDict, model_config: ModelConfig, mesh=None):
    """The sampler a rollout worker uses: ``config.sampler.kind`` (default "batch"), rows =
    ``groups_per_order * group_size`` unless ``config.sampler.slots`` says otherwise, on the
    worker's ``mesh`` (None: one device)."""
    options = config.get("sampler") or ml_collections.ConfigDict()
    kind = options.get("kind", "batch")
    rows = options.get("slots", 0) or config.groups_per_order * config.group_size
    if kind == "batch":
        return PolicySampler(model_config, rows, config.max_new_tokens, config.temperature, mesh)
    if kind == "continuous":
        return ContinuousPolicySampler(model_config, rows, config.max_new_tokens, config.seq_len,
                                       config.temperature, options.get("steps_per_call", 4),
                                       options.get("recompute_on_update", True), mesh)
    raise ValueError(f"sampler.kind={kind!r}; allowed: {list(SAMPLER_KINDS)}")
