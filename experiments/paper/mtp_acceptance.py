"""Paper table 5, MTP acceptance: accepted length of the shared 3-step MTP module when it
drafts 1-4 tokens per step, and the decode speedup it buys on CPU.

    python -m glm5_jax.reproduce mtp_acceptance --scale=cpu --workdir=/tmp/repro_mtp

The paper (as the issue quotes it): accept length 2.76 with 4 speculative steps, against
DeepSeek-V3.2's 2.55. The model is ``pretrained_small.py``'s. Accepted length here is
tokens emitted per main-model step (accepted drafts + 1), ``glm5_jax.sample``'s
``mean_accepted_length``; decoding is exact (same output distribution as without drafts).
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from glm5_jax.reproduce.experiment_files import load_module
from glm5_jax.reproduce.scales import check_scale


def get_config(scale: str = "cpu") -> ml_collections.ConfigDict:
    return load_module(Path(__file__).with_name("pretrained_small.py")).get_config(scale)


def get_table(scale: str = "cpu") -> ml_collections.ConfigDict:
    scale = check_scale(scale)
    smoke = scale == "smoke"
    table = ml_collections.ConfigDict()
    table.seeds = (0,)
    table.corpus = "synthetic" if smoke else "config"
    table.checkpoint = ""  # a training workdir to measure instead of training one
    table.speculative_steps = (1, 2, 3, 4)  # 0 (no drafts) is always measured as the baseline
    table.temperatures = (0.0,) if smoke else (0.0, 1.0)  # greedy; and sampling at T=1
    # Prompts: the first HumanEval prompts, their last prompt_tokens tokens.
    table.prompts = 4 if smoke else 32
    table.prompt_tokens = 24 if smoke else 96
    table.new_tokens = 8 if smoke else 64
    table.timing_rounds = 1 if smoke else 3  # rounds of timed calls, every setting once per round
    table.topologies = {"default": "v5p-1024"} if scale == "pod" else {}
    table.paper = (
        {"claim": "accept length 2.76 with 4 speculative steps", "value": 2.76,
         "source": "GLM-5, arXiv 2602.15763, as quoted in the issue"},
        {"claim": "DeepSeek-V3.2's accept length 2.55 at 4 steps", "value": 2.55,
         "source": "GLM-5, arXiv 2602.15763, as quoted in the issue"},
    )
    return table
