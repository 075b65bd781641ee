"""The static pieces of a run, built once from its config: mesh, data, model, optimizer,
state shardings, and the compiled step per DSA stage.

The loop, the benchmark and tests all start from ``build_run`` so they train exactly the
same program the main job does.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding

from glm5_jax.config import ModelConfig
from glm5_jax.data.config import DataConfig
from glm5_jax.data.build import prepare_once
from glm5_jax.data.pipeline import PreparedCorpus, vocab_size_of
from glm5_jax.data.streams import stream_rows_iterator
from glm5_jax.distributed import barrier
from glm5_jax.model import GLM5Model, logical_partition_specs
from glm5_jax.sharding import batch_shards, batch_sharding, make_mesh
from glm5_jax.train.experiment import (
    ExperimentConfigError,
    data_config_from,
    model_config_from,
    validate,
)
from glm5_jax.train.optimizer import make_optimizer
from glm5_jax.train.process_data import ProcessRegion, global_batch_array, process_region
from glm5_jax.train.train_state import TrainState, init_train_state, state_shardings
from glm5_jax.train.train_step import make_train_step

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")
BATCH_DTYPES = {"inputs": jnp.int32, "targets": jnp.int32, "segment_ids": jnp.int32,
                "positions": jnp.int32, "loss_mask": jnp.float32}  # as data/packing.py makes them


@dataclasses.dataclass
class Run:
    """A run's layout (mesh, model, optimizer, shardings: see ``RunLayout``, whose fields
    read through as ``run.mesh`` etc.) plus its data."""

    data_config: DataConfig
    prepared: PreparedCorpus
    layout: "RunLayout"
    region: ProcessRegion  # the block of the global batch this process's devices hold
    _compiled: dict[str, Callable] = dataclasses.field(default_factory=dict)  # jitted, by name

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "layout":
            raise AttributeError(name)
        return getattr(self.layout, name)

    def init_state(self) -> TrainState:
        """The step-0 state, created directly in its shardings."""
        if "init" not in self._compiled:
            self._compiled["init"] = jax.jit(self.init, out_shardings=self.shardings)
        return self._compiled["init"]()

    def step_fn(self, stage: str) -> Callable:
        """The jitted train step of a stage (compiled on first call; call inside the mesh).

        In a multi-process job it is compiled here, ahead of its first call, and every process
        waits for the others to finish compiling before any runs it: the step's collectives
        must not start while a peer is still compiling (``distributed.barrier``)."""
        if stage not in self._compiled:
            step = self.layout.jit_step(stage)
            if jax.process_count() > 1:
                step = step.lower(self.layout.abstract_state, self.layout.abstract_batch()).compile()
                barrier(f"glm5-train-step-compiled-{stage}")
            self._compiled[stage] = step
        return self._compiled[stage]

    def make_iterator(self):
        """This process's rows of every global batch (``data/streams.py``), checkpointable."""
        return stream_rows_iterator(self.data_config, self.prepared, self.region.rows)

    def to_device(self, batch: dict) -> dict:
        """The global batch from this process's row group's rows (``process_data``)."""
        shape = (self.config.batch_size, self.config.seq_len)
        return {key: global_batch_array(self.data_sharding, self.region, batch[key], shape)
                for key in BATCH_KEYS}


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """Everything about a run but its data: the model, optimizer and state laid out on a
    mesh, and the jitted step per stage. ``build_run`` and the planner (``glm5_jax.plan``,
    which compiles for devices that are not here) share it, so they build one program."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    model_config: ModelConfig
    param_specs: Any
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    init: Callable[[], TrainState]
    abstract_state: TrainState
    shardings: TrainState
    data_sharding: NamedSharding

    def jit_step(self, stage: str) -> Callable:
        """``jax.jit`` of the stage's train step with the run's shardings (not compiled)."""
        return jax.jit(
            make_train_step(self.model_config, self.config, self.optimizer, self.schedule, stage),
            in_shardings=(self.shardings, {key: self.data_sharding for key in BATCH_KEYS}),
            out_shardings=(self.shardings, None), donate_argnums=0)

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch as the step receives it (shapes, dtypes, sharding)."""
        shape = (self.config.batch_size, self.config.seq_len)
        return {key: jax.ShapeDtypeStruct(shape, BATCH_DTYPES[key], sharding=self.data_sharding)
                for key in BATCH_KEYS}


def _check_batch_divides(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Each micro-batch's rows shard over data x fsdp x expert, the sequence over context:
    say so before jit does."""
    shards = batch_shards(mesh)
    micro = config.batch_size // max(config.grad_accum_steps, 1)
    if micro % shards:
        raise ExperimentConfigError(
            f"batch_size={config.batch_size} (over grad_accum_steps={config.grad_accum_steps}: "
            f"{micro} rows per micro-batch) must divide by the mesh's data x fsdp x expert = "
            f"{shards} (mesh {config.mesh!r}); change batch_size, or move devices to the "
            "tensor axis")
    context = dict(mesh.shape)["context"]
    if config.seq_len % context:
        raise ExperimentConfigError(f"seq_len={config.seq_len} must divide by the mesh's context axis "
                         f"({context}, mesh {config.mesh!r})")


def build_layout(config: ml_collections.ConfigDict, vocab_size: int,
                 devices: Sequence[jax.Device] | None = None) -> RunLayout:
    """Mesh, model, optimizer and state shardings for ``config`` on ``devices`` (default:
    all local ones; deviceless TPU devices work too: nothing is allocated here)."""
    validate(config)
    mesh = make_mesh(config.mesh, devices)
    _check_batch_divides(config, mesh)
    model_config = model_config_from(config, vocab_size)
    model = GLM5Model(model_config)
    param_specs = logical_partition_specs(model)["params"]
    optimizer, schedule = make_optimizer(config, param_specs)
    init = functools.partial(init_train_state, model, optimizer, config.seed)
    abstract = jax.eval_shape(init)
    shardings = state_shardings(mesh, abstract, param_specs)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings)
    return RunLayout(config, mesh, model_config, param_specs, optimizer, schedule, init,
                     abstract, shardings, batch_sharding(mesh))


def build_run(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Run:
    """Check the config, build the corpus and tokenizer (the vocabulary sizes the model), and
    lay the state out on the mesh. ``devices`` defaults to all; the mesh must cover them."""
    validate(config)
    data_config = data_config_from(config)
    prepared = prepare_once(data_config)  # process 0 builds, the others wait
    layout = build_layout(config, vocab_size_of(prepared), devices)
    region = process_region(layout.data_sharding, (config.batch_size, config.seq_len))
    return Run(data_config=data_config, prepared=prepared, layout=layout, region=region)
