"""A table's training rows as sweep points: one ``glm5_jax.train`` workdir per row.

``train_points`` hands the rows to the sweep runner (``glm5_jax.sweep.runner.run_sweep``):
each is ``python -m glm5_jax.train --config=experiments/paper/<table>.py:<scale>
--workdir=DIR/points/<row> --config.<override>=...`` in its own process; finished rows are
skipped on a rerun, unfinished ones resume from their checkpoints, a failing row is recorded
(``sweep_status.json``) and the others go on. The sweep's own ``results.jsonl/md/png`` are
written too, so DIR is an ordinary sweep directory.

The XLA compilation cache is shared by the points and this process (the repository's
``.jax_cache`` unless ``JAX_COMPILATION_CACHE_DIR`` is set), so measuring a trained row
recompiles nothing the row's training already compiled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from glm5_jax.reproduce.context import Context
from glm5_jax.reproduce.experiment_files import flatten, training_config
from glm5_jax.reproduce.scales import REPO

COMPILE_CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": str(REPO / ".jax_cache"),
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def share_compile_cache() -> None:
    """Point this process and the sweep's subprocesses at one persistent compile cache."""
    for key, value in COMPILE_CACHE_ENV.items():
        os.environ.setdefault(key, value)
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                      int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


def point_dir(context: Context, name: str) -> Path:
    return context.workdir / "points" / name


def train_points(context: Context, points: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Train every row (``points``: row name -> nested overrides) that is not done yet; the
    status of each (``done``, ``failed`` with its error, ...)."""
    from glm5_jax.sweep.results import point_row, write_results
    from glm5_jax.sweep.runner import read_status, run_sweep

    for overrides in points.values():  # an unknown field fails here, before any training
        training_config(context.experiment, context.scale, overrides)
    flat = {name: flatten(overrides) for name, overrides in points.items()}
    context.workdir.mkdir(parents=True, exist_ok=True)
    statuses = run_sweep(context.workdir, flat, context.config_argument, [], "local", context.parallel,
                         echo=context.echo)
    rows = [point_row(name, flat[name], read_status(point_dir(context, name)) or statuses[name],
                      point_dir(context, name)) for name in flat]
    write_results(context.workdir, rows, "ce_loss")
    return statuses


def row_provenance(context: Context, name: str, overrides: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """What produced a row: config, overrides, seed, the commit its training recorded, workdir."""
    info_path = point_dir(context, name) / "run_info.json"
    commit = None
    if info_path.exists():
        commit = json.loads(info_path.read_text()).get("git_commit")
    return {"config": context.config_argument, "overrides": flatten(overrides), "seed": seed,
            "commit": commit, "workdir": str(Path("points") / name)}
