"""The pretrained small model that the code-benchmark and MTP tables evaluate: trained as the
table's one sweep point, or an existing training workdir given as ``--table.checkpoint=DIR``
(so both tables can measure one model), loaded with its tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from glm5_jax.errors import UserError
from glm5_jax.reproduce.context import Context
from glm5_jax.reproduce.corpora import corpus_overrides
from glm5_jax.reproduce.experiment_files import merge
from glm5_jax.reproduce.points import point_dir, row_provenance, train_points

ROW = "pretrained"


@dataclasses.dataclass
class TrainedModel:
    name: str
    seed: int | None
    status: str  # done | failed | ...
    workdir: Path
    provenance: dict[str, Any]
    error: str | None = None


def points(context: Context) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    spec = context.spec
    if spec.get("checkpoint"):
        return {}
    shared = corpus_overrides(context, spec) if context.scale != "pod" else {}
    return {f"{ROW}-seed{seed}": ({"row": ROW, "seed": seed}, merge({"seed": seed}, shared))
            for seed in spec.seeds}


def trained_models(context: Context) -> list[TrainedModel]:
    """Train the table's point(s), or take ``spec.checkpoint``; one entry per model."""
    checkpoint = context.spec.get("checkpoint")
    if checkpoint:
        directory = Path(checkpoint).absolute()
        if not (directory / "checkpoints").is_dir() or not (directory / "model_config.json").exists():
            raise UserError(f"--table.checkpoint={checkpoint}: not a training workdir (needs checkpoints/ "
                            "and model_config.json, as python -m glm5_jax.train writes)")
        info_path = directory / "run_info.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        command = info.get("command_line", [])
        provenance = {"config": next((a.split("=", 1)[1] for a in command if a.startswith("--config=")), None),
                      "overrides": [a for a in command if a.startswith("--config.")],
                      "seed": None, "commit": info.get("git_commit"), "workdir": str(directory)}
        return [TrainedModel(directory.name, None, "done", directory, provenance)]
    rows = points(context)
    statuses = train_points(context, {name: overrides for name, (_, overrides) in rows.items()})
    models = []
    for name, (identity, overrides) in rows.items():
        status = statuses[name]
        error_lines = (status.get("error") or "").splitlines()
        models.append(TrainedModel(name, identity["seed"], status.get("status", "pending"),
                                   point_dir(context, name),
                                   row_provenance(context, name, overrides, identity["seed"]),
                                   error_lines[-1] if error_lines else None))
    return models


def load(directory: Path):
    """(model config, variables, tokenizer for documents) of a training workdir or an HF
    checkpoint directory with its tokenizer.json."""
    from glm5_jax.data.tokenizer import document_tokenizer
    from glm5_jax.sample.checkpoint import load_for_generation, load_tokenizer

    model, variables = load_for_generation(str(directory))
    tokenizer = load_tokenizer(str(directory))
    if tokenizer is None:
        raise UserError(f"{directory} has no tokenizer.json; the model's prompts cannot be encoded")
    return model.config, variables, document_tokenizer(tokenizer)


def fixed_length_prompts(tokenizer, texts: list[str], length: int) -> list[list[int]]:
    """Each text's last ``length`` tokens; a shorter one is preceded by newline tokens up to
    ``length`` (blank lines before Python code), so every prompt has one shape and the decode
    program compiles once."""
    newline = tokenizer.encode("\n").ids
    prompts = []
    for text in texts:
        ids = tokenizer.encode(text).ids[-length:]
        prompts.append(newline[:1] * (length - len(ids)) + ids)
    return prompts
