"""``python -m glm5_jax.data.build --config=experiments/tiny.py [--config.data.X=...]``:
build an experiment's corpus and tokenizer offline, once, before a (multi-host) run.

A run then finds both under ``data.data_dir`` and only opens them. Without this step the
first process of a job builds them while the others wait (``prepare_once``).
"""

from __future__ import annotations

from glm5_jax import cli


def prepare_once(data_config):
    """``prepare_corpus`` with process 0 first and the others after it (they then find the
    build on a shared filesystem, or build their own copy on local disks)."""
    import jax
    from jax.experimental import multihost_utils

    from glm5_jax.data.pipeline import prepare_corpus

    if jax.process_count() == 1:
        return prepare_corpus(data_config)
    prepared = prepare_corpus(data_config) if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("glm5_jax: corpus and tokenizer prepared")
    return prepared if prepared is not None else prepare_corpus(data_config)


def main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}")
    from glm5_jax.data.pipeline import vocab_size_of
    from glm5_jax.train.experiment import data_config_from

    prepared = prepare_once(data_config_from(flags.FLAGS.config))
    print(f"corpus: {prepared.builder.data_dir} ({len(prepared.data_source())} documents)\n"
          f"tokenizer: {prepared.tokenizer_path} (vocabulary {vocab_size_of(prepared)})", flush=True)


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    # Defined here, not at import: the trainer imports prepare_once and has its own --config.
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.mark_flags_as_required(["config"])
    cli.run(main)
