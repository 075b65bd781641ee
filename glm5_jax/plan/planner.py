"""Compile the train step for a TPU topology that is not here, and read what it needs.

The program is the one ``glm5_jax.train`` runs: ``build_layout`` (the same mesh, model,
optimizer and state shardings as ``build_run``, minus the corpus) and its ``jit_step``,
lowered with abstract arguments and compiled by libtpu for deviceless devices. Memory per
device comes from the compiled program (arguments + outputs - donated aliases +
temporaries + code); when the temporaries alone exceed HBM the compiler refuses, and its
message gives the amount. FLOPs are the matmul FLOPs of the compiled HLO with every loop's
trip count applied (``plan/hlo_flops``): the compiler's own cost analysis counts a
``while`` body once, so for scanned layers and gradient accumulation it reports a fraction
of the step (kept in the JSON as ``xla_cost_analysis_flops``). Bytes accessed are the cost
analysis's, which also count a loop body once, scaled by ``hlo_bytes.loop_factor`` (the
trip counts applied to an operand + result estimate of each computation's traffic);
collective bytes come from the compiled HLO (``hlo_collectives``).
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import ml_collections
import numpy as np

from glm5_jax.config import get_preset
from glm5_jax.config_fields import set_fields
from glm5_jax.plan.hlo_bytes import loop_factor
from glm5_jax.plan.hlo_collectives import CollectiveStats, collective_stats
from glm5_jax.plan.roofline import Roofline, roofline
from glm5_jax.plan.topology import Topology
from glm5_jax.plan.hlo_flops import matmul_flops
from glm5_jax.sharding import activate
from glm5_jax.train.experiment import DENSE, DENSE_WARMUP, SPARSE
from glm5_jax.train.flops import training_flops_per_token
from glm5_jax.train.run_setup import RunLayout, build_layout
from glm5_jax.train.train_step import forward_config

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_OOM = re.compile(r"HLO temporaries \(([\d.]+)([KMGTP]?)\) exceeds available HBM "
                  r"\(([\d.]+)([KMGTP]?)\)")


@dataclasses.dataclass
class StagePlan:
    stage: str
    fits: bool
    peak_bytes: float  # per device
    argument_bytes: float
    output_bytes: float
    alias_bytes: float
    temp_bytes: float
    code_bytes: float
    hlo_flops: float | None = None  # matmul FLOPs, loop trip counts applied
    hlo_bytes_accessed: float | None = None  # the compiler's, scaled by the loops' trip counts
    xla_cost_analysis_flops: float | None = None  # the compiler's: a loop body counted once
    xla_cost_analysis_bytes: float | None = None  # the compiler's: a loop body counted once
    unknown_trip_counts: int = 0  # loops the FLOP count could not read a bound of (counted once)
    hlo_flops_by_part: dict[str, float] | None = None  # hlo_flops.part_of -> matmul FLOPs
    collectives: CollectiveStats | None = None
    roofline: Roofline | None = None
    compiler_refused: str | None = None  # the compiler's out-of-memory message


@dataclasses.dataclass
class Plan:
    topology: Topology
    mesh: dict[str, int]
    config: ml_collections.ConfigDict
    params_bytes: float  # per device
    optimizer_bytes: float  # per device
    model_flops: float  # per device per step (train.flops)
    stages: list[StagePlan]

    @property
    def hbm_bytes(self) -> int:
        return self.topology.chip.hbm_bytes

    @property
    def worst(self) -> StagePlan:
        return max(self.stages, key=lambda s: s.peak_bytes)

    @property
    def fits(self) -> bool:
        return all(stage.fits for stage in self.stages)

    def to_json(self) -> dict:
        worst = self.worst
        fitting = [s for s in self.stages if s.roofline is not None]
        slowest = max(fitting, key=lambda s: s.roofline.step_s) if fitting else None
        return {
            "fits": self.fits,
            "peak_bytes_per_device": worst.peak_bytes,
            "hbm_bytes_per_device": self.hbm_bytes,
            "flops_per_device": worst.hlo_flops,
            "model_flops_per_device": self.model_flops,
            "params_bytes_per_device": self.params_bytes,
            "optimizer_bytes_per_device": self.optimizer_bytes,
            "mesh": self.mesh,
            "topology": self.topology.name,
            "chips": self.topology.num_chips,
            "seq_len": self.config.seq_len,
            "batch_size": self.config.batch_size,
            "remat_policy": set_fields(self.config.model_overrides).get("remat_policy", "none"),
            "worst_stage": worst.stage,
            "step_seconds": slowest.roofline.step_s if slowest else None,
            "mfu": slowest.roofline.mfu if slowest else None,
            "stages": {s.stage: {
                "fits": s.fits, "peak_bytes": s.peak_bytes, "temp_bytes": s.temp_bytes,
                "argument_bytes": s.argument_bytes, "hlo_flops": s.hlo_flops,
                "xla_cost_analysis_flops": s.xla_cost_analysis_flops,
                "unknown_trip_counts": s.unknown_trip_counts,
                "hlo_flops_by_part": s.hlo_flops_by_part,
                "hlo_bytes_accessed": s.hlo_bytes_accessed,
                "xla_cost_analysis_bytes": s.xla_cost_analysis_bytes,
                "collective_bytes": s.collectives.bytes_by_kind if s.collectives else None,
                "step_seconds": s.roofline.step_s if s.roofline else None,
                "mfu": s.roofline.mfu if s.roofline else None,
                "compiler_refused": s.compiler_refused} for s in self.stages},
        }


def stages_of(config: ml_collections.ConfigDict) -> list[str]:
    """The attention stages the run's schedule reaches (``experiment.stage_at``)."""
    stages = []
    if config.dense_steps > 0:
        stages.append(DENSE)
    if config.dense_warmup_steps > 0 and config.total_steps > config.dense_steps:
        stages.append(DENSE_WARMUP)
    if config.total_steps > config.dense_steps + config.dense_warmup_steps:
        stages.append(SPARSE)
    return stages


def planning_vocab_size(config: ml_collections.ConfigDict) -> int:
    """The tokenizer's size the run would get: ``data.vocab_size`` where the experiment
    trains its own tokenizer, else the preset's (a released tokenizer)."""
    data = config.get("data")
    if data is not None and data.get("vocab_size"):
        return int(data.vocab_size)
    return get_preset(config.model).vocab_size


def per_device_bytes(tree) -> float:
    """Bytes one device holds of a tree of ShapeDtypeStructs carrying shardings."""
    total = 0.0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def plan(config: ml_collections.ConfigDict, topology: Topology,
         stages: list[str] | None = None) -> Plan:
    devices = topology.devices()
    layout = build_layout(config, planning_vocab_size(config), devices)
    state = layout.abstract_state
    tokens = config.batch_size * config.seq_len
    results = []
    for stage in stages or stages_of(config):
        model_flops = training_flops_per_token(
            forward_config(layout.model_config, stage, config.seq_len), config.seq_len)
        if stage == DENSE_WARMUP:  # only the indexer trains: the useful work is one forward
            model_flops /= 3
        results.append(compile_stage(layout, stage, topology,
                                     model_flops * tokens / len(devices)))
    model_flops = training_flops_per_token(layout.model_config, config.seq_len)
    return Plan(topology, dict(layout.mesh.shape), config, per_device_bytes(state.params),
                per_device_bytes(state.opt_state), model_flops * tokens / len(devices), results)


def compile_stage(layout: RunLayout, stage: str, topology: Topology,
                  model_flops_per_device: float) -> StagePlan:
    hbm = topology.chip.hbm_bytes
    arguments = per_device_bytes(layout.abstract_state) + per_device_bytes(layout.abstract_batch())
    with activate(layout.mesh):
        lowered = layout.jit_step(stage).lower(layout.abstract_state, layout.abstract_batch())
        try:
            compiled = lowered.compile()
        except Exception as error:  # noqa: BLE001 -- only the compiler's OOM is expected
            message = str(error)
            if "RESOURCE_EXHAUSTED" not in message:
                raise
            match = _OOM.search(message)
            if not match:  # on-chip memory (VMEM) of one fusion, not HBM: a compiler limit
                return StagePlan(stage, False, arguments, arguments, 0.0, 0.0, 0.0, 0.0,
                                 compiler_refused=" ".join(message.split())[:300])
            temp = float(match.group(1)) * _UNITS[match.group(2)]
            return StagePlan(stage, False, arguments + temp, arguments, 0.0, 0.0, temp, 0.0,
                             compiler_refused=message.splitlines()[0][:300])
    memory = compiled.memory_analysis()
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
            - memory.alias_size_in_bytes + memory.temp_size_in_bytes
            + memory.generated_code_size_in_bytes)
    cost = compiled.cost_analysis() or {}
    text = compiled.as_text()
    counted = matmul_flops(text)
    accessed = float(cost.get("bytes accessed", 0.0)) * loop_factor(text)
    collectives = collective_stats(text)
    return StagePlan(
        stage, peak <= hbm, float(peak), float(memory.argument_size_in_bytes),
        float(memory.output_size_in_bytes), float(memory.alias_size_in_bytes),
        float(memory.temp_size_in_bytes), float(memory.generated_code_size_in_bytes),
        counted.flops, accessed, collectives=collectives,
        roofline=roofline(topology.chip, counted.flops, accessed, collectives.total_bytes,
                          model_flops_per_device),
        xla_cost_analysis_flops=float(cost.get("flops", 0.0)),
        xla_cost_analysis_bytes=float(cost.get("bytes accessed", 0.0)),
        unknown_trip_counts=counted.unknown_trip_counts, hlo_flops_by_part=counted.by_part)
