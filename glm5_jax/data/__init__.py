"""Pretraining data: offline corpora, a local tokenizer, and a packed grain pipeline.

Entry points (import from the submodules; this package imports nothing heavy):

    from glm5_jax.data.config import DataConfig
    from glm5_jax.data.pipeline import make_train_iterator, prepare_corpus, vocab_size_of

    config = DataConfig(data_dir="/tmp/glm5_data", corpus="python_code",
                        vocab_size=2048, seq_len=256, batch_size=8, seed=0,
                        num_epochs=None, max_files=1000)
    iterator = make_train_iterator(config)   # grain.DatasetIterator
    batch = next(iterator)                   # dict of numpy arrays, [batch_size // hosts, seq_len]:
        # inputs, targets, segment_ids, positions: int32; loss_mask: float32

* `config.DataConfig`: data_dir, corpus ("python_code" or a directory of
  .txt/.md/.rst/.py/.jsonl files), vocab_size, seq_len, batch_size (global), seed,
  num_epochs (None = forever), max_files, max_bytes, tokenizer_path (load e.g.
  GLM-5's tokenizer.json instead of training), shard_index/shard_count (default: JAX
  process index/count), read_threads.
* `pipeline.make_train_iterator(config)`: builds the corpus and tokenizer if missing,
  returns the iterator. `pipeline.prepare_corpus(config)` does only the building and
  returns the TFDS builder, tokenizer and tokenizer path; `pipeline.vocab_size_of`
  gives the embedding size the model needs; `pipeline.make_train_dataset(config,
  prepared)` gives the grain IterDataset.
* `code_corpus.build_code_corpus(data_dir, max_files, max_bytes, ...)`: the corpus of
  Python sources installed on this machine (standard library, site-packages),
  deduplicated by content hash; records: text, path, package, license,
  license_header, sha256.
* `text_corpus.build_text_corpus(source_dir, data_dir, text_field="text")`: any
  directory of text/JSONL files; a malformed JSONL line raises
  `text_files.MalformedRecordError` naming the file and line.
* `tokenizer.train_or_load_tokenizer(path, vocab_size, texts)`: byte-level BPE with
  chat/code special tokens (`<|pad|>` = 0, `<|endoftext|>` = 1, roles, FIM), saved as
  tokenizer.json; any existing tokenizer.json is loaded as is.
* `synthetic_corpus.write_synthetic_corpus(directory)`: a tiny varied corpus for tests.

Batches: each document is tokenized, `<|endoftext|>` appended, turned into
next-token pairs and packed into rows; `segment_ids` number documents within a row
(0 = padding), `positions` restart at 0 in each segment (a document split across
rows starts again at 0), `targets` never come from another document, and `loss_mask`
is 1 exactly where `segment_ids > 0`. Mask attention with
`segment_ids[:, :, None] == segment_ids[:, None, :]` (and causality).

Checkpointing: `iterator.get_state()` / `set_state(state)`, or in an orbax
CheckpointManager `grain.checkpoint.CheckpointSave(iterator)` /
`grain.checkpoint.CheckpointRestore(iterator)` beside the train state.
"""
