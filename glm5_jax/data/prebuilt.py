"""Corpora that already exist: a TFDS dataset by name, or a built ArrayRecord directory.

``data.corpus="tfds:NAME"`` (``NAME`` may carry ``/CONFIG`` and ``:VERSION``, as in
``tfds.builder``) reads the dataset prepared under ``data.data_dir``;
``data.corpus="arrayrecord:/path/to/name/config/version"`` reads the TFDS directory there
(``tfds.builder_from_directory``). Both may be on ``gs://`` (TFDS and ArrayRecord open
buckets themselves; the path is an ``etils.epath`` path). Nothing is downloaded at run
time: a dataset that is not prepared, or not in the ArrayRecord format that grain reads
with random access, is an error saying how to prepare it. Records need a text feature (``data.text_field``).
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from glm5_jax.errors import UserError
from glm5_jax.paths import as_path

TFDS_PREFIX = "tfds:"
ARRAYRECORD_PREFIX = "arrayrecord:"


def is_prebuilt(corpus: str) -> bool:
    return corpus.startswith((TFDS_PREFIX, ARRAYRECORD_PREFIX))


def prebuilt_builder(corpus: str, data_dir: str, text_field: str) -> tfds.core.DatasetBuilder:
    if corpus.startswith(TFDS_PREFIX):
        name = corpus[len(TFDS_PREFIX):]
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as error:  # noqa: BLE001 - TFDS raises several kinds for a bad name
            raise UserError(f"data.corpus={corpus!r}: TFDS has no dataset {name!r} ({error})") from error
    else:
        path = corpus[len(ARRAYRECORD_PREFIX):]
        try:
            builder = tfds.builder_from_directory(as_path(path))
        except Exception as error:  # noqa: BLE001
            raise UserError(f"data.corpus={corpus!r}: {path} is not a built TFDS directory "
                            f"(name/config/version with dataset_info.json): {error}") from error
    if corpus.startswith(TFDS_PREFIX) and not builder.is_prepared():
        raise UserError(f"data.corpus={corpus!r} is not prepared under {data_dir}: build it once "
                        "offline (tfds build --file_format=array_record ...); runs never download")
    features = builder.info.features
    if text_field not in features:
        raise UserError(f"data.corpus={corpus!r} has no text feature {text_field!r}; its features: "
                        f"{sorted(features.keys())} (set data.text_field)")
    return builder


class TextFieldSource:
    """A random-access source whose records carry their text under ``"text"``."""

    def __init__(self, source, text_field: str):
        self._source, self._field = source, text_field

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        return {"text": self._source[index][self._field]}
