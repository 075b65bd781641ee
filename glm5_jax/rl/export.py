"""``python -m glm5_jax.rl.export --workdir=RL_DIR --out=HF_DIR [--step=N]``: an RL policy as
an HF checkpoint directory.

The run's kept snapshot of learner step N (default: the last one in
``RL_DIR/eval_snapshots``) with the policy's architecture (``policy.policy_model_config``),
written by ``save_hf`` (config.json + safetensors that transformers' GlmMoeDsaForCausalLM
loads), plus the tokenizer: a run that used its checkpoint's BPE tokenizer
(``tokenizer="checkpoint"``) gets that ``tokenizer.json`` copied beside the weights, so
``python -m glm5_jax.sample``, ``glm5-eval`` and the paper's code table
(``--table.rl_checkpoint=HF_DIR``) load it like any checkpoint. A character-tokenizer run has
no tokenizer file; its export says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from glm5_jax.errors import UserError

TOKENIZER_FILE = "tokenizer.json"


def snapshot_for(workdir: Path, step: int | None) -> dict:
    from glm5_jax.rl.evaluation import read_snapshots

    snapshots = read_snapshots(workdir)
    if not snapshots:
        raise UserError(f"{workdir} has no kept policy snapshots (eval_snapshots/index.jsonl): "
                        "is it an RL run directory?")
    if step is None:
        return max(snapshots, key=lambda entry: entry["step"])
    chosen = [entry for entry in snapshots if entry["step"] == step]
    if not chosen:
        raise UserError(f"--step={step}: no snapshot of that step; kept: "
                        f"{sorted(entry['step'] for entry in snapshots)}")
    return chosen[-1]


def export_policy(workdir: str | Path, out: str | Path, step: int | None = None) -> dict:
    """Write the policy of ``step`` to ``out``; returns what was written (step, tokenizer)."""
    from flax import serialization

    from glm5_jax.convert.hf_checkpoint import save_hf
    from glm5_jax.model import GLM5Model
    from glm5_jax.rl.evaluation import SNAPSHOTS, load_run_config
    from glm5_jax.rl.experiment_setup import make_tokenizer
    from glm5_jax.rl.policy import policy_model_config

    workdir, out = Path(workdir), Path(out)
    if not (workdir / "config.json").exists():
        raise UserError(f"{workdir} has no config.json: is it an RL run directory?")
    config = load_run_config(workdir)
    snapshot = snapshot_for(workdir, step)
    tokenizer = make_tokenizer(config)
    model_config = policy_model_config(config, tokenizer.vocab_size, tokenizer.bos_id,
                                       tokenizer.eos_id, tokenizer.pad_id)
    variables = serialization.msgpack_restore((workdir / SNAPSHOTS / snapshot["file"]).read_bytes())
    out.mkdir(parents=True, exist_ok=True)
    save_hf(GLM5Model(model_config), variables, str(out))
    copied = None
    if config.get("tokenizer") == "checkpoint" and config.get("init_from"):
        source = Path(config.init_from) / TOKENIZER_FILE
        if source.exists():
            shutil.copyfile(source, out / TOKENIZER_FILE)
            copied = str(source)
    return {"step": snapshot["step"], "policy_version": snapshot.get("policy_version"),
            "tokenizer": copied}


def main(argv: list[str]) -> None:
    del argv
    written = export_policy(_WORKDIR.value, _OUT.value, _STEP.value)
    tokenizer = (f"tokenizer.json from {written['tokenizer']}" if written["tokenizer"] else
                 "no tokenizer file (the run used the character tokenizer)")
    print(f"wrote the policy of step {written['step']} to {_OUT.value} ({tokenizer})")


if __name__ == "__main__":  # flags only here: importing this module must not define them
    from absl import flags

    from glm5_jax import cli

    _WORKDIR = flags.DEFINE_string("workdir", None, "RL run directory", required=True)
    _OUT = flags.DEFINE_string("out", None, "HF checkpoint directory to write", required=True)
    _STEP = flags.DEFINE_integer("step", None, "learner step of a kept snapshot (default: the last)")
    cli.run(main, distributed=False)
