"""Build the corpus a DataConfig names and read text back from it.

Why a dispatcher: the pipeline and the tokenizer trainer only need "a built TFDS
dataset with a `text` feature"; which builder made it (the machine's Python sources,
or a user directory) is decided here, once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from glm5_jax.data.code_corpus import build_code_corpus
from glm5_jax.data.config import PYTHON_CODE_CORPUS, DataConfig
from glm5_jax.data.prebuilt import is_prebuilt, prebuilt_builder
from glm5_jax.data.text_corpus import build_text_corpus

TRAIN_SPLIT = "train"


def build_corpus(config: DataConfig) -> tfds.core.DatasetBuilder:
    """Builds (or reuses) the corpus of `config.corpus` under `config.data_dir`; a
    prebuilt one (``tfds:NAME``, ``arrayrecord:DIR``) is only opened."""
    if is_prebuilt(config.corpus):
        return prebuilt_builder(config.corpus, config.data_dir, config.text_field)
    if config.corpus == PYTHON_CODE_CORPUS:
        return build_code_corpus(
            config.data_dir, max_files=config.max_files, max_bytes=config.max_bytes
        )
    return build_text_corpus(config.corpus, config.data_dir, text_field=config.text_field)


def sample_texts(source: Sequence[dict[str, Any]], max_bytes: int, seed: int = 0) -> Iterator[str]:
    """Document texts in a fixed random order until about max_bytes of text.

    Why random and not the first documents: corpora are stored in sorted order, so
    their head is one package (or one file); a seeded permutation samples all of it.
    """
    total = 0
    for index in np.random.default_rng(seed).permutation(len(source)):
        text = source[int(index)]["text"]
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        yield text
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            return
