"""The pretraining loop: config and workdir in; metrics and checkpoints out.

``train`` reads top to bottom: build the mesh, the data and the model; restore the latest
good checkpoint or initialise; then step, log every ``log_every`` steps and checkpoint every
``checkpoint_every``. Running it again with the same workdir resumes where the last
checkpoint left off and reproduces the same losses bit for bit (the state, the RNG and the
data iterator's position are all in the checkpoint, and the step is deterministic).
The workdir may be local or ``gs://...``: every file in it goes through ``etils.epath``
(``glm5_jax/paths.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from etils import epath

from glm5_jax.paths import as_path
from glm5_jax.sample.checkpoint import MODEL_CONFIG_FILE, TOKENIZER_FILE
from glm5_jax.sharding import activate
from glm5_jax.train.checkpointing import Checkpointer
from glm5_jax.train.experiment import stage_at
from glm5_jax.train.flops import peak_flops_per_device, training_flops_per_token
from glm5_jax.run_info import check_same_experiment, describe, write_run_info
from glm5_jax.train.preemption import PreemptionWatch
from glm5_jax.train.metrics_writer import MetricsWriter, summarize_window
from glm5_jax.train.run_setup import Run, build_run
from glm5_jax.train.train_state import TrainState

_LOG = logging.getLogger("glm5_jax.train")


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    start_step: int  # the step this call resumed from (0: fresh)
    end_step: int
    metrics: list[dict[str, Any]]  # the records this call logged
    preempted: bool = False  # stopped early by SIGTERM, after a checkpoint


class Throughput:
    """Tokens/s and MFU over the window since the previous log (the first window of a run
    includes compilation)."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self._start, self._steps = time.perf_counter(), 0

    def step(self) -> None:
        self._steps += 1

    def summary(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        tokens_per_second = self._steps * self.tokens_per_step / elapsed
        summary = {"tokens_per_second": tokens_per_second,
                   "step_time": elapsed / max(self._steps, 1),
                   "mfu": tokens_per_second * self.flops_per_token / self.peak_flops}
        self._start, self._steps = time.perf_counter(), 0
        return summary


def write_generation_files(workdir: epath.Path, run: Run) -> None:
    """The model config and tokenizer beside the checkpoints, so ``glm5_jax.generate`` and
    ``glm5-eval`` can load the workdir as it is (``glm5_jax/sample/checkpoint.py``)."""
    if jax.process_index() != 0:
        return
    (workdir / MODEL_CONFIG_FILE).write_text(json.dumps(run.model_config.to_dict(), indent=1))
    as_path(run.prepared.tokenizer_path).copy(workdir / TOKENIZER_FILE, overwrite=True)


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
          devices: Sequence[jax.Device] | None = None, stop_at_step: int | None = None,
          run: Run | None = None, experiment: str | None = None) -> TrainResult:
    """Train (or resume) until ``config.total_steps`` (or ``stop_at_step``, a clean early stop
    that still checkpoints). ``devices`` defaults to all; the mesh must cover exactly them.
    ``run``: a ``build_run(config, devices)`` to reuse (its programs are already compiled)."""
    run = build_run(config, devices) if run is None else run
    workdir = as_path(workdir)
    check_same_experiment(workdir, experiment)
    workdir.mkdir(parents=True, exist_ok=True)
    # Before the data iterator exists: its prefetch threads would share the cores being timed.
    peak, peak_source = peak_flops_per_device(config.peak_flops_per_device)
    iterator = run.make_iterator()
    checkpoints = Checkpointer(workdir / "checkpoints", config.keep_checkpoints,
                               config.async_checkpointing,
                               fingerprint=config.get("checkpoint_fingerprint", True))
    throughput = Throughput(config.batch_size * config.seq_len,
                            training_flops_per_token(run.model_config, config.seq_len),
                            peak * run.mesh.size)
    _LOG.warning("mesh %s; %d parameters; vocab %d from %s; peak %.3g FLOP/s per device (%s)",
                 dict(run.mesh.shape), sum(x.size for x in jax.tree.leaves(run.abstract_state.params)),
                 run.model_config.vocab_size, run.prepared.tokenizer_path, peak, peak_source)

    write_run_info(workdir, describe(run.mesh, experiment=experiment))
    # From here on, SIGTERM means "checkpoint at the next step boundary and stop".
    with activate(run.mesh), PreemptionWatch() as preemption:
        # Refuses (raises, moves nothing) checkpoints this config cannot continue or read;
        # metrics.jsonl and TensorBoard are only touched by the MetricsWriter below.
        restored = checkpoints.restore_latest(run.abstract_state, iterator)
        if restored is None:  # a fresh start (failed restores may have moved the iterator)
            state, start = run.init_state(), 0
            iterator = run.make_iterator()
        else:
            state, start = restored
            _LOG.warning("resumed from step %d of %s", start, checkpoints.directory)
        write_generation_files(workdir, run)  # after the restore: a refused one leaves them
        end = config.total_steps if stop_at_step is None else min(stop_at_step, config.total_steps)
        writer = MetricsWriter(workdir, start, config.total_steps, config.progress_bar)
        records, window, preempted = [], [], False
        for step in range(start + 1, end + 1):
            stage = stage_at(config, step)
            state, metrics = run.step_fn(stage)(state, run.to_device(next(iterator)))
            window.append(metrics)  # device values: fetched only when logging
            throughput.step()
            writer.advance()
            preempted = preemption.should_stop(step)
            last = step == end or preempted
            if step % config.log_every == 0 or last:
                record = {**summarize_window(jax.device_get(window)), **throughput.summary(),
                          "stage": stage}
                writer.write(step, record)
                records.append({"step": step, **record})
                window = []
            if step % config.checkpoint_every == 0 or last:
                checkpoints.save(step, state, iterator)
            if preempted:
                _LOG.warning("preempted (SIGTERM): checkpoint saved at step %d; rerun the same "
                             "command to continue", step)
                end = step
                break
        checkpoints.close()
        writer.close()
    return TrainResult(state=state, start_step=start, end_step=max(end, start), metrics=records,
                       preempted=preempted)
