"""What every paper table's config shares: the scale names and the trimmed smoke model.

Each table file in ``experiments/paper/`` (``cost.py``, ``long_context.py``, ...) defines
``get_config(scale)``, the training config every row of the table starts from (its rows add
overrides), and ``get_table(scale)``: the rows, seeds and evaluation settings. ``scale`` is the
text after the colon of ``--config=experiments/paper/cost.py:cpu`` (ml_collections passes it
to ``get_config``), so ``python -m glm5_jax.train`` and ``python -m glm5_jax.plan`` read the
same file the reproduction does:

* ``smoke``: minutes on two CPU cores, a synthetic corpus written into the table's workdir;
  CI runs every table at this scale. Its numbers only show the pipeline works.
* ``cpu``: the size whose results go into BENCHMARKS.md.
* ``pod``: the config for a TPU pod (launched through ``launch/``, checked with
  ``python -m glm5_jax.plan``); nobody here can run it.
"""

from __future__ import annotations

from pathlib import Path

from glm5_jax.errors import UserError

SCALES = ("smoke", "cpu", "pod")
REPO = Path(__file__).resolve().parents[2]  # the code: always local
EXPERIMENTS = REPO / "experiments"

# Smoke models: the train tests' trim (glm5_jax/train/testing.py): a dense-prefix layer with
# its own indexer and one MoE layer reusing that selection, no MTP (it doubles compile time).
SMOKE_MODEL = {"num_hidden_layers": 2, "first_k_dense_replace": 1,
               "indexer_types": ("full", "shared"), "num_mtp_layers": 0}
# The smoke data: a synthetic corpus the reproduction writes into DIR/corpus, a 320-token BPE.
SMOKE_VOCAB = 320


def check_scale(scale: str) -> str:
    """``scale`` if it is one of SCALES, else a UserError naming the allowed values."""
    if scale not in SCALES:
        raise UserError(f"scale={scale!r} is not a scale of the paper tables; allowed: {list(SCALES)}")
    return scale
