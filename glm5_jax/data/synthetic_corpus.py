"""Write a small, varied, deterministic text corpus to a directory.

Why: tests (ours and the train loop's) need a corpus that builds in milliseconds and
still exercises what real data does: documents shorter and much longer than a row,
an empty one, tabs, non-ASCII text, special-token strings inside text, and both
file formats (JSONL lines and whole .txt files). Every document is unique, so tests
can tell documents apart after packing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_VOCABULARY = (
    "def return import class self lambda yield async await for while if else None True "
    "tensor jax numpy grain α β γ λ 数据 模型 ✓ 😀 <|endoftext|> <|user|>"
)
_WORDS = (*_VOCABULARY.split(), "\t", "\n", "    ", "")


def synthetic_documents(num_documents: int, seed: int = 0) -> list[str]:
    """Unique documents of 0 to ~2,000 characters; document 0 is empty."""
    rng = np.random.default_rng(seed)
    documents = [""]
    for index in range(1, num_documents):
        length = int(rng.choice([3, 20, 80, 300]) * rng.uniform(0.5, 1.5))
        words = rng.choice(np.array(_WORDS, dtype=object), size=length)
        documents.append(f"# document {index}\n" + " ".join(words))
    return documents


def write_synthetic_corpus(
    directory: str | Path, num_documents: int = 60, seed: int = 0
) -> list[str]:
    """Writes the documents (first half as one JSONL file, the rest as .txt files) and
    returns them in the order the text corpus builder will read them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    documents = synthetic_documents(num_documents, seed)
    half = num_documents // 2
    with (directory / "a_documents.jsonl").open("w", encoding="utf-8") as jsonl:
        for text in documents[:half]:
            jsonl.write(json.dumps({"text": text, "source": "synthetic"}) + "\n")
    text_dir = directory / "b_texts"
    text_dir.mkdir(exist_ok=True)
    for index, text in enumerate(documents[half:]):
        (text_dir / f"{index:05d}.txt").write_text(text, encoding="utf-8")
    return documents
