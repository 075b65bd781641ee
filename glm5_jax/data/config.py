"""The one config object the input pipeline reads.

Why a frozen dataclass and not an ml_collections ConfigDict: the pipeline is a library
that experiment configs call into; a typed, hashable config catches misspelt fields at
construction and can key caches. An experiment's ConfigDict converts with
`DataConfig(**config.data)`.
"""

from __future__ import annotations

import dataclasses

PYTHON_CODE_CORPUS = "python_code"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What to read, how to tokenize it and how to cut it into batches.

    Attributes:
      data_dir: where built ArrayRecord datasets (and their tokenizers) live; local or
        gs://... (TFDS and ArrayRecord open buckets themselves).
      corpus: "python_code" for the corpus of Python sources installed on this machine,
        or the path (local or gs://...) of a directory of .txt/.md/.py/.jsonl files.
      vocab_size: size of the byte-level BPE vocabulary trained when no
        `tokenizer_path` is given (special tokens included).
      seq_len: tokens per packed row.
      batch_size: GLOBAL rows per step; each host yields batch_size // shard_count.
      seed: drives the document shuffle; the same seed gives the same batches.
      num_epochs: passes over the corpus; None repeats forever (use None for
        multi-host training so every host yields the same number of batches).
      max_files: cap on source files in the python_code corpus (None: all).
      max_bytes: cap on total bytes in the python_code corpus (None: no cap).
      tokenizer_path: an existing tokenizer.json to load (e.g. GLM-5's) instead of
        training one.
      tokenizer_training_bytes: how much corpus text the BPE trainer sees.
      text_field: the JSONL key that holds a record's text in a user corpus.
      shuffle: shuffle documents (reshuffled every epoch); False keeps corpus order.
      shard_index / shard_count: this reader's slice of the documents; None means
        jax.process_index() / jax.process_count(). The trainer sets them per stream.
      num_streams: document streams the global batch is assembled from (row blocks of
        batch_size / num_streams each; see data/streams.py). A property of the
        experiment, not of the process count: the same value gives the same batches on
        any number of processes. At scale: the number of hosts, or a multiple.
      read_threads: grain threads that read and tokenize documents ahead of packing.
      loss_only_after: "" (default): the loss covers every real token. Otherwise text that
        encodes to one token: the loss covers only targets whose input is that token (an
        answer-only loss for recall tasks, e.g. " ==" before each answer; `loss_mask`).
    """

    data_dir: str
    corpus: str = PYTHON_CODE_CORPUS
    vocab_size: int = 2048
    seq_len: int = 256
    batch_size: int = 8
    seed: int = 0
    num_epochs: int | None = None
    max_files: int | None = 1000
    max_bytes: int | None = 32 * 1024 * 1024
    tokenizer_path: str | None = None
    tokenizer_training_bytes: int = 4 * 1024 * 1024
    text_field: str = "text"
    shuffle: bool = True
    shard_index: int | None = None
    shard_count: int | None = None
    num_streams: int = 1
    read_threads: int = 2
    loss_only_after: str = ""
