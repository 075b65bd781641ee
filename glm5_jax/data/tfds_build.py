"""Run a TFDS build with every network path switched off.

Why: our builders read only local files, but TFDS would otherwise try to fetch
pre-built copies from its public bucket first, which hangs or fails on machines
without internet access.
"""

from __future__ import annotations

import tensorflow_datasets as tfds


def prepare_offline(builder: tfds.core.DatasetBuilder, rebuild: bool = False) -> None:
    """`download_and_prepare` without downloads; reuses a finished build unless
    `rebuild`."""
    mode = (
        tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
        if rebuild
        else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False, download_mode=mode),
    )
