"""``python -m glm5_jax.train --config=experiments/tiny.py --workdir=DIR [--config.field=value]``.

Running the same command again with the same ``--workdir`` resumes from its latest good
checkpoint.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (experiments/<name>.py); override fields with "
    "--config.<field>=<value>.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl "
                               "and TensorBoard events; reusing it resumes the run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax's per-save INFO lines would bury the progress bar
    from glm5_jax.train.loop import (
        train,  # imported after flag parsing, as jax reads XLA_FLAGS
    )


    result = train(_CONFIG.value, _WORKDIR.value)
    if result.metrics:
        last = result.metrics[-1]
        print(f"done: step {result.end_step}, loss {last['loss']:.4f}, "
              f"tokens/s {last['tokens_per_second']:.0f}", flush=True)
    else:
        print(f"nothing to do: the run in {_WORKDIR.value} is already at step {result.end_step}",
              flush=True)


if __name__ == "__main__":
    app.run(main)
