"""``python -m glm5_jax.rl --config=experiments/rl/<name>.py --workdir=DIR [--config.mode=sync]``

Metrics go to ``DIR/metrics.jsonl`` (one line per learner step), checkpoints to
``DIR/checkpoints``; rerunning the same command resumes.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from glm5_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (metrics, checkpoints, weights)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    from glm5_jax.rl.loop import train

    train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main)  # the learner's process joins a multi-process job first (glm5_jax.distributed)
