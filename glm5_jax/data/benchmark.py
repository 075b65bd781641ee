"""Time the data path at the tiny-run defaults: corpus build, tokenizer training, and
pipeline throughput. Prints a markdown table.

    python -m glm5_jax.data.benchmark --data_dir /tmp/glm5_data_bench [--steps 300]

Why a module here rather than in benchmarks/: it measures only this package and is
handy on any machine that has the package installed. The data_dir should be empty
(or absent) for the build and training times to mean anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from glm5_jax.data.config import DataConfig
from glm5_jax.data.corpus import build_corpus, sample_texts
from glm5_jax.data.pipeline import (
    PreparedCorpus,
    default_tokenizer_path,
    make_train_dataset,
)
from glm5_jax.data.tokenizer import train_or_load_tokenizer


def _directory_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--corpus", default="python_code")
    arguments = parser.parse_args()
    config = DataConfig(
        data_dir=arguments.data_dir, corpus=arguments.corpus, shard_index=0, shard_count=1
    )

    start = time.perf_counter()
    builder = build_corpus(config)
    build_seconds = time.perf_counter() - start
    source = builder.as_data_source("train")
    text_bytes = sum(len(source[index]["text"]) for index in range(len(source)))

    start = time.perf_counter()
    path = default_tokenizer_path(builder, config.vocab_size)
    tokenizer = train_or_load_tokenizer(
        path, config.vocab_size, sample_texts(source, config.tokenizer_training_bytes)
    )
    tokenizer_seconds = time.perf_counter() - start
    prepared = PreparedCorpus(builder, tokenizer, path)

    rows = []
    for read_threads in (1, 2):
        iterator = iter(
            make_train_dataset(dataclasses.replace(config, read_threads=read_threads), prepared)
        )
        next(iterator)  # warm-up: first fetch starts the reader threads
        start = time.perf_counter()
        real_tokens = total_tokens = 0
        for _ in range(arguments.steps):
            batch = next(iterator)
            real_tokens += int(batch["loss_mask"].sum())
            total_tokens += batch["inputs"].size
        seconds = time.perf_counter() - start
        rows.append((read_threads, total_tokens / seconds, real_tokens / total_tokens))

    print(f"machine: {os.cpu_count()} CPUs; config: {config}")
    print()
    print("| measurement | value |")
    print("| --- | --- |")
    print(f"| corpus build ({len(source)} documents) | {build_seconds:.2f} s |")
    print(f"| corpus text | {text_bytes / 2**20:.1f} MiB |")
    print(
        f"| ArrayRecord + metadata on disk | {_directory_bytes(Path(builder.data_dir)) / 2**20:.1f} MiB |"
    )
    print(
        f"| tokenizer training (vocab {tokenizer.get_vocab_size()}, "
        f"{config.tokenizer_training_bytes / 2**20:.0f} MiB sample) | {tokenizer_seconds:.2f} s |"
    )
    for read_threads, tokens_per_second, fill in rows:
        print(
            f"| pipeline, read_threads={read_threads} ({arguments.steps} batches of "
            f"{config.batch_size}x{config.seq_len}) | {tokens_per_second:,.0f} tokens/s "
            f"({fill:.1%} non-padding) |"
        )


if __name__ == "__main__":
    main()
