"""TFDS builder for any directory of text/JSONL files (see `text_files` for formats).

Why a config per directory: the built dataset is named after the directory and a hash
of its absolute path and text field (`<basename>_<hash>`), so several user corpora can
share one data_dir and rebuilding the same directory reuses the earlier build. A
directory whose files changed needs `rebuild=True` (TFDS does not watch files). The directory
may be on `gs://` (its URI names it then; read through `etils.epath`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from glm5_jax.data.text_files import iter_text_documents
from glm5_jax.data.tfds_build import prepare_offline
from glm5_jax.paths import resolved

TEXT_CORPUS_VERSION = "1.0.0"


@dataclasses.dataclass(eq=False)
class TextDirectoryConfig(tfds.core.BuilderConfig):
    source_dir: str = ""
    text_field: str = "text"


def text_config_name(source_dir: str | os.PathLike, text_field: str) -> str:
    """`<sanitised basename>_<10 hex digits of sha256(absolute path or URI, text field)>`."""
    absolute = resolved(source_dir)
    basename = re.sub(r"[^A-Za-z0-9_]", "_", absolute.name) or "root"
    digest = hashlib.sha256(f"{absolute}|{text_field}".encode()).hexdigest()[:10]
    return f"{basename}_{digest}"


class TextDirectory(tfds.core.GeneratorBasedBuilder):
    """One example per document: text, source file, JSONL line (0 for whole files)."""

    VERSION = tfds.core.Version(TEXT_CORPUS_VERSION)
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        TEXT_CORPUS_VERSION: "Text and JSONL files from a local directory."
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Documents read from {self.builder_config.source_dir}.",
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "path": tfds.features.Text(),
                    "line": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        config: TextDirectoryConfig = self.builder_config
        for document in iter_text_documents(config.source_dir, config.text_field):
            yield f"{document.path}:{document.line}", dataclasses.asdict(document)


def build_text_corpus(
    source_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    text_field: str = "text",
    rebuild: bool = False,
) -> tfds.core.DatasetBuilder:
    """Builds (or reuses) the dataset of a user directory; returns the builder.

    Raises MalformedRecordError (from the generator) naming the bad file and line.
    """
    config = TextDirectoryConfig(
        name=text_config_name(source_dir, text_field),
        version=TEXT_CORPUS_VERSION,
        source_dir=str(resolved(source_dir)),
        text_field=text_field,
    )
    builder = TextDirectory(config=config, data_dir=str(data_dir), file_format="array_record")
    prepare_offline(builder, rebuild=rebuild)
    return builder
