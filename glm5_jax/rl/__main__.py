"""``python -m glm5_jax.rl --config=experiments/rl/<name>.py --workdir=DIR [--config.mode=sync]``

Metrics go to ``DIR/metrics.jsonl`` (one line per learner step), checkpoints to
``DIR/checkpoints``, where everything ran to ``DIR/run_info.json``; rerunning the same command
resumes. ``--config.placement.*`` says which devices the learner and each rollout worker get.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from glm5_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (metrics, checkpoints, run_info.json)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    from glm5_jax import distributed
    from glm5_jax.rl.loop import train, validate
    from glm5_jax.rl.placement import restrict_learner_process

    config = _CONFIG.value
    validate(config)
    # The learner's platform and accelerators are fixed before its JAX starts (and before the
    # process joins a multi-process job), so rollout workers on this host find theirs free.
    restrict_learner_process(config, distributed.job_shape().num_processes)
    distributed.initialize()
    train(config, _WORKDIR.value)


if __name__ == "__main__":
    cli.run(main, distributed=False)
