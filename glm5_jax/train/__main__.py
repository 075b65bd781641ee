"""``python -m glm5_jax.train --config=experiments/tiny.py --workdir=DIR [--config.field=value]``.

Running the same command again with the same ``--workdir`` resumes from its latest good
checkpoint. SIGTERM stops at the next step boundary after a checkpoint (exit 0; rerun to
continue). Bad input (an unknown override, a mesh that does not fit the devices, a workdir
of another experiment) prints one line and exits 2. In a multi-process job every process
runs this same command (``launch/local.py``, ``launch/tpu.py``, ``launch/slurm.py``).
"""

from __future__ import annotations

from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from glm5_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (experiments/<name>.py); override fields with "
    "--config.<field>=<value>.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl "
                               "and TensorBoard events, local or gs://... (through etils.epath); "
                               "reusing it resumes the run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax's per-save INFO lines would bury the progress bar
    import jax

    from glm5_jax.train.loop import train  # imported after flag parsing, as jax reads XLA_FLAGS

    experiment = Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    result = train(_CONFIG.value, _WORKDIR.value, experiment=experiment)
    if jax.process_index() != 0:
        return
    if result.preempted:
        print(f"preempted: checkpoint saved at step {result.end_step}; rerun the same command "
              "to continue", flush=True)
    elif result.metrics:
        last = result.metrics[-1]
        print(f"done: step {result.end_step}, loss {last['loss']:.4f}, "
              f"tokens/s {last['tokens_per_second']:.0f}", flush=True)
    else:
        print(f"nothing to do: the run in {_WORKDIR.value} is already at step {result.end_step}",
              flush=True)


if __name__ == "__main__":
    cli.run(main)
