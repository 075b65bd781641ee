"""The training input pipeline: config in, iterator of packed numpy batches out.

    corpus (ArrayRecord, via TFDS data source)
      -> this host's documents [shard_index::shard_count]
      -> shuffle documents (seeded, a new order every epoch) -> repeat(num_epochs)
      -> tokenize (+ <|endoftext|>) into next-token pairs
      -> pack into seq_len rows (segment ids, positions)
      -> batch (batch_size // shard_count rows; a final partial batch is padded)
      -> {"inputs", "targets", "segment_ids", "positions", "loss_mask"}

Why documents are shuffled before packing rather than rows after it: a seeded
permutation of documents is an exact global shuffle (a row buffer only mixes nearby
rows), it costs nothing to checkpoint, and rows still arrive in random order.

Why hosts split documents, not batches: each host reads and tokenizes only its own
1/shard_count of the corpus. Host k's documents are the k-th stride of the sorted
corpus, so the hosts' shares are disjoint and together the whole corpus.

Checkpointing: the returned `grain.DatasetIterator` has `get_state()` /
`set_state()` (a small JSON-able dict) and saves in an orbax CheckpointManager with
`grain.checkpoint.CheckpointSave(iterator)` / `CheckpointRestore(iterator)`, one file
per process. A restored iterator yields exactly the batches the saved one would have.
"""

from __future__ import annotations

import dataclasses
import functools

import grain
import tensorflow_datasets as tfds
from etils import epath
from tokenizers import Tokenizer

from glm5_jax.data.build_lock import exclusive_build_lock
from glm5_jax.data.config import DataConfig
from glm5_jax.data.corpus import TRAIN_SPLIT, build_corpus, sample_texts
from glm5_jax.data.prebuilt import TextFieldSource, is_prebuilt
from glm5_jax.data.packing import (
    TokenizeDocument,
    has_tokens,
    pack_documents,
    training_batch,
)
from glm5_jax.data.tokenizer import TOKENIZER_FILE_NAME, document_tokenizer, train_or_load_tokenizer
from glm5_jax.paths import as_path


@dataclasses.dataclass(frozen=True)
class PreparedCorpus:
    """A built corpus and the tokenizer that goes with it."""

    builder: tfds.core.DatasetBuilder
    tokenizer: Tokenizer
    tokenizer_path: epath.Path  # local, or gs://...
    text_field: str = "text"

    def data_source(self):
        """Random-access records of the train split (`tfds.data_source` equivalent), each
        with its text under "text"."""
        source = self.builder.as_data_source(TRAIN_SPLIT)
        return source if self.text_field == "text" else TextFieldSource(source, self.text_field)


def default_tokenizer_path(builder: tfds.core.DatasetBuilder, vocab_size: int) -> epath.Path:
    """Where a tokenizer trained on a corpus lives: beside its ArrayRecord shards, in a
    directory per vocabulary size so several can coexist."""
    return as_path(builder.data_dir) / f"tokenizer_vocab{vocab_size}" / TOKENIZER_FILE_NAME


def prepare_corpus(config: DataConfig) -> PreparedCorpus:
    """Builds the corpus and trains (or loads) its tokenizer; cheap when both exist.

    Safe to call from every process of a host at once (see `build_lock`).
    """
    with exclusive_build_lock(config.data_dir):
        builder = build_corpus(config)
        if config.tokenizer_path is not None:
            path = as_path(config.tokenizer_path)
            texts = None
        else:
            path = default_tokenizer_path(builder, config.vocab_size)
            source = builder.as_data_source(TRAIN_SPLIT)
            if is_prebuilt(config.corpus) and config.text_field != "text":
                source = TextFieldSource(source, config.text_field)
            texts = sample_texts(source, config.tokenizer_training_bytes)
        tokenizer = train_or_load_tokenizer(path, config.vocab_size, texts)
    text_field = config.text_field if is_prebuilt(config.corpus) else "text"
    return PreparedCorpus(builder, tokenizer, path, text_field)


def host_shard(config: DataConfig) -> tuple[int, int]:
    """(shard_index, shard_count) from the config, else from JAX's process topology."""
    if (config.shard_index is None) != (config.shard_count is None):
        raise ValueError("set both shard_index and shard_count, or neither")
    if config.shard_index is not None:
        index, count = config.shard_index, config.shard_count
    else:
        import jax  # only needed when the topology is not given

        index, count = jax.process_index(), jax.process_count()
    if not 0 <= index < count:
        raise ValueError(f"shard_index {index} not in [0, {count})")
    return index, count


def make_train_dataset(
    config: DataConfig, prepared: PreparedCorpus | None = None
) -> grain.IterDataset:
    """The pipeline as a grain IterDataset (iterate it, or call `iter()` for state)."""
    prepared = prepare_corpus(config) if prepared is None else prepared
    shard_index, shard_count = host_shard(config)
    if config.batch_size % shard_count:
        raise ValueError(f"batch_size {config.batch_size} not divisible by {shard_count} hosts")
    host_batch_size = config.batch_size // shard_count

    documents = grain.MapDataset.source(prepared.data_source())[shard_index::shard_count]
    if config.shuffle:
        documents = documents.shuffle(seed=config.seed)
    documents = documents.repeat(config.num_epochs)
    examples = documents.map(TokenizeDocument(prepared.tokenizer)).filter(has_tokens)
    rows = pack_documents(
        examples.to_iter_dataset(
            grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=64)
        ),
        config.seq_len,
    )
    # Padding the last batch (instead of dropping it) keeps shapes static and loses no
    # tokens; padded rows are all segment 0, so their loss_mask is 0.
    batches = rows.batch(
        host_batch_size,
        batch_fn=functools.partial(grain.experimental.batch_and_pad, batch_size=host_batch_size),
    )
    return batches.map(functools.partial(
        training_batch, loss_only_after=loss_only_after_id(config, prepared.tokenizer)))


def loss_only_after_id(config: DataConfig, tokenizer: Tokenizer) -> int | None:
    """The token id of `config.loss_only_after` (None when unset); it must be one token."""
    if not config.loss_only_after:
        return None
    encoder = document_tokenizer(tokenizer)
    ids = encoder.encode(config.loss_only_after, add_special_tokens=False).ids
    if len(ids) != 1:
        raise ValueError(f"loss_only_after={config.loss_only_after!r} is {len(ids)} tokens, not one")
    return ids[0]


def make_train_iterator(
    config: DataConfig, prepared: PreparedCorpus | None = None
) -> grain.DatasetIterator:
    """The entry point for the train loop: an iterator of numpy batch dicts with
    checkpointable state (see the module docstring). Pass `prepared` when the caller
    already called `prepare_corpus` (e.g. to size the model's vocabulary)."""
    return iter(make_train_dataset(config, prepared))


def vocab_size_of(prepared: PreparedCorpus) -> int:
    """The embedding size the model needs: the largest id + 1, added tokens included
    (a loaded tokenizer.json may leave gaps in its ids, so not the token count)."""
    return max(prepared.tokenizer.get_vocab(with_added_tokens=True).values()) + 1
