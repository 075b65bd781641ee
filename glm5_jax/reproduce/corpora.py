"""The corpus a table trains on: the config's own, or one written into the table's workdir.

``spec.corpus`` names it: ``"config"`` (the experiment's ``data.corpus``, e.g. the local
Python-code corpus at cpu scale), ``"synthetic"`` (``data/synthetic_corpus.py``'s varied text,
for smoke runs: it builds in seconds) or ``"retrieval"`` (``retrieval_task.py``'s documents,
for the long-context table). A written corpus lives in DIR/corpus with its built dataset and
tokenizer in DIR/data, and is written once (a rerun reuses it).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from glm5_jax.errors import UserError
from glm5_jax.reproduce.context import Context

CORPORA = ("config", "synthetic", "retrieval")


def corpus_overrides(context: Context, spec: ml_collections.ConfigDict) -> dict[str, Any]:
    """Nested overrides that point a row at the table's corpus (written here if needed)."""
    kind = spec.corpus
    if kind not in CORPORA:
        raise UserError(f"table.corpus={kind!r}; allowed: {list(CORPORA)}")
    if kind == "config":
        return {}
    directory = context.workdir / "corpus"
    marker = context.workdir / "corpus.complete"  # outside the corpus: the builder reads every file there
    if not marker.exists():
        if kind == "synthetic":
            from glm5_jax.data.synthetic_corpus import write_synthetic_corpus

            write_synthetic_corpus(directory, num_documents=spec.get("synthetic_documents", 60), seed=0)
        else:
            from glm5_jax.reproduce.retrieval_task import write_retrieval_corpus

            write_retrieval_corpus(directory, spec.task)
        marker.write_text("")
    return {"data": {"corpus": str(directory), "data_dir": str(context.workdir / "data")}}
