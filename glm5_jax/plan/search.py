"""``--search``: try mesh shapes, remat policies and micro-batching, rank the plans that fit.

Every candidate is a real compile (minutes each for glm5_full), so the search is bounded:
candidates are generated from what can work at all (every axis divides what it shards:
experts over ``expert``, heads over ``tensor``, the batch over data x fsdp x expert, the
sequence over ``context``), ordered so the likeliest to fit come first (more devices on the
axes that shard activations, then full remat, then fewer micro-batches), and the first
``budget`` are compiled. Plans that fit rank by the roofline step time per token.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import ml_collections

from glm5_jax.plan.planner import Plan, plan, planning_vocab_size
from glm5_jax.plan.topology import Topology
from glm5_jax.train.experiment import model_config_from

REMAT_CHOICES = ("full", "save_dots")
ACCUM_CHOICES = (1, 2, 4)


@dataclasses.dataclass(frozen=True)
class Candidate:
    mesh: str
    remat_policy: str
    grad_accum_steps: int

    def describe(self) -> str:
        return f"mesh {self.mesh}, remat {self.remat_policy}, grad_accum {self.grad_accum_steps}"


def _powers_of_two_dividing(n: int) -> list[int]:
    return [2**i for i in range(n.bit_length()) if n % 2**i == 0]


def candidates(config: ml_collections.ConfigDict, chips: int) -> list[Candidate]:
    """Every (mesh, remat, accumulation) that divides cleanly, likeliest to fit first."""
    model = model_config_from(config, planning_vocab_size(config))  # as the run builds it
    found = []
    for expert, tensor, context in itertools.product(
            _powers_of_two_dividing(chips), (1, 2, 4), _powers_of_two_dividing(chips)):
        if chips % (expert * tensor * context):
            continue
        fsdp = chips // (expert * tensor * context)
        if model.n_routed_experts % expert or model.num_attention_heads % tensor:
            continue
        if config.seq_len % context or (context > 1 and config.seq_len // context < 1024):
            continue
        for accum in ACCUM_CHOICES:
            if config.batch_size % accum or (config.batch_size // accum) % (fsdp * expert):
                continue
            for remat in REMAT_CHOICES:
                mesh = f"fsdp={fsdp},expert={expert},context={context},tensor={tensor}"
                found.append(Candidate(mesh, remat, accum))

    def likely_to_fit(c: Candidate) -> tuple:
        sizes = dict(part.split("=") for part in c.mesh.split(","))
        # Activation memory per chip falls with tokens per chip; weights with fsdp x expert.
        tokens_per_chip = config.batch_size * config.seq_len / c.grad_accum_steps / (
            int(sizes["fsdp"]) * int(sizes["expert"]) * int(sizes["context"]))
        return (tokens_per_chip / int(sizes["tensor"]), c.remat_policy != "full",
                c.grad_accum_steps, -int(sizes["expert"]))

    return sorted(found, key=likely_to_fit)


def search(config: ml_collections.ConfigDict, topology: Topology, stages: list[str] | None,
           budget: int, report=print) -> list[tuple[Candidate, Plan]]:
    """Compile up to ``budget`` candidates; the ones that fit, fastest (roofline) first."""
    fitting = []
    for candidate in candidates(config, topology.num_chips)[:budget]:
        trial = ml_collections.ConfigDict(config.to_dict())
        trial.mesh = candidate.mesh
        trial.grad_accum_steps = candidate.grad_accum_steps
        trial.model_overrides["remat_policy"] = candidate.remat_policy
        result = plan(trial, topology, stages)
        worst = result.worst
        report(f"{candidate.describe()}: peak {worst.peak_bytes / 2**30:,.2f} GiB of "
               f"{result.hbm_bytes / 2**30:,.2f} GiB, {'fits' if result.fits else 'does not fit'}")
        if result.fits:
            fitting.append((candidate, result))
    return sorted(fitting, key=lambda pair: _step_seconds(pair[1]))


def _step_seconds(result: Plan) -> float:
    times = [s.roofline.step_s for s in result.stages if s.roofline]
    return max(times) if times else math.inf
