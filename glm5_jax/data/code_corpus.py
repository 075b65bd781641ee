"""TFDS builder for the corpus of Python sources installed on this machine.

Why TFDS: a built dataset is a versioned directory of ArrayRecord shards plus
`dataset_info.json`, which grain reads with random access (`as_data_source`) and which
any other TFDS user can open with `tfds.builder_from_directory`. Nothing is
downloaded: the builder's examples come from `iter_python_sources`. TensorFlow is not
needed: TFDS writes ArrayRecord through the `array_record` package.

Each size setting is its own builder config, named from its limits
(`files1000_bytes33554432`), so a tiny and a large corpus can sit side by side under one
data_dir and a second call with the same limits reuses the first build. The content
depends on what is installed, so two machines may build different corpora from the
same config; `dataset_info.json` records the example count and each record its sha256.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import tensorflow_datasets as tfds

from glm5_jax.data.python_sources import (
    DEFAULT_MAX_FILE_BYTES,
    SourceRoot,
    iter_python_sources,
)
from glm5_jax.data.tfds_build import prepare_offline

CODE_CORPUS_VERSION = "1.1.0"  # bump when the file selection changes: old builds are not reused


@dataclasses.dataclass(eq=False)
class PythonCodeConfig(tfds.core.BuilderConfig):
    """Corpus limits; `source_roots` replaces the machine's roots (tests use it)."""

    max_files: int | None = None
    max_bytes: int | None = None
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    source_roots: tuple[SourceRoot, ...] | None = None


def code_config_name(
    max_files: int | None,
    max_bytes: int | None,
    max_file_bytes: int,
    source_roots: tuple[SourceRoot, ...] | None,
) -> str:
    """A config name that changes whenever the corpus' contents could."""
    name = f"files{max_files or 'all'}_bytes{max_bytes or 'all'}"
    if max_file_bytes != DEFAULT_MAX_FILE_BYTES:
        name += f"_filebytes{max_file_bytes}"
    if source_roots is not None:
        # A different set of roots is a different corpus: name it by its directories.
        import hashlib

        key = "|".join(f"{root.name}={root.directory}" for root in source_roots)
        name += "_roots" + hashlib.sha256(key.encode()).hexdigest()[:10]
    return name


class PythonCode(tfds.core.GeneratorBasedBuilder):
    """One example per Python source file: text, path, package, licence."""

    VERSION = tfds.core.Version(CODE_CORPUS_VERSION)
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Standard library and site-packages sources.",
        "1.1.0": "Whitespace-only files are skipped.",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Python sources installed on the build machine, deduplicated.",
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "path": tfds.features.Text(),
                    "package": tfds.features.Text(),
                    "license": tfds.features.Text(),
                    "license_header": tfds.features.Text(),
                    "sha256": tfds.features.Text(),
                }
            ),
            # Keep the sorted build order on disk; the pipeline shuffles with a seed.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        config: PythonCodeConfig = self.builder_config
        for source in iter_python_sources(
            roots=config.source_roots,
            max_files=config.max_files,
            max_bytes=config.max_bytes,
            max_file_bytes=config.max_file_bytes,
        ):
            yield source.path, dataclasses.asdict(source)


def build_code_corpus(
    data_dir: str | Path,
    max_files: int | None = 1000,
    max_bytes: int | None = 32 * 1024 * 1024,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    source_roots: tuple[SourceRoot, ...] | None = None,
) -> tfds.core.DatasetBuilder:
    """Builds (or reuses) the python_code corpus under data_dir; returns the builder.

    `builder.as_data_source("train")` is the random-access source the pipeline reads;
    `builder.data_dir` is the directory holding the ArrayRecord shards.
    """
    config = PythonCodeConfig(
        name=code_config_name(max_files, max_bytes, max_file_bytes, source_roots),
        version=CODE_CORPUS_VERSION,
        max_files=max_files,
        max_bytes=max_bytes,
        max_file_bytes=max_file_bytes,
        source_roots=source_roots,
    )
    builder = PythonCode(config=config, data_dir=str(data_dir), file_format="array_record")
    prepare_offline(builder)
    return builder
