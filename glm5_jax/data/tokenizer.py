"""Byte-level BPE tokenizer: trained locally with `tokenizers`, or loaded from any
tokenizer.json (GLM-5's included).

Why byte-level BPE with no normalizer: every string, code with tabs, odd indentation
and any Unicode, encodes to bytes and decodes back exactly (`decode(encode(text)) ==
text`), so a model trained on it can reproduce source files byte for byte.

Special tokens are added first so their ids are stable and small: `<|pad|>` is id 0
(the pipeline pads with 0 and masks padding out of the loss), `<|endoftext|>` id 1
ends every document. The chat roles, tool observation and fill-in-the-middle tokens
follow GLM's names so chat/RL code written for GLM-5's tokenizer works with ours.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from glm5_jax.paths import as_path, is_local

PAD_TOKEN = "<|pad|>"
END_OF_TEXT_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN,
    END_OF_TEXT_TOKEN,
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|code_prefix|>",  # fill-in-the-middle: prefix, suffix, then the middle
    "<|code_suffix|>",
    "<|code_middle|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "[gMASK]",
    "<sop>",
)
BYTE_ALPHABET_SIZE = 256
TOKENIZER_FILE_NAME = "tokenizer.json"


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Iterable[str] = SPECIAL_TOKENS,
) -> Tokenizer:
    """Trains byte-level BPE on `texts`; the result has exactly `vocab_size` ids
    unless the texts are too small to learn that many merges."""
    special_tokens = list(special_tokens)
    minimum = BYTE_ALPHABET_SIZE + len(special_tokens)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} < {minimum} (256 bytes + special tokens)")
    tokenizer = Tokenizer(models.BPE())
    # use_regex splits like GPT-2 (words, numbers, runs of spaces) before merging.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Loads any tokenizer.json written by `tokenizers` (ours, GLM-5's, ...), from local disk
    or a URI such as gs://... (read through etils.epath)."""
    if is_local(path):
        return Tokenizer.from_file(str(path))
    return Tokenizer.from_str(as_path(path).read_text())


def train_or_load_tokenizer(
    path: str | os.PathLike,
    vocab_size: int,
    texts: Iterable[str] | None = None,
) -> Tokenizer:
    """The tokenizer at `path` if that file exists, else one trained on `texts` and
    saved there.

    A loaded file is used as it is, whatever `vocab_size` says: callers that own the
    path (the pipeline) put the vocabulary size in the directory name.
    """
    path = as_path(path)
    if path.exists():
        return load_tokenizer(path)
    if texts is None:
        raise FileNotFoundError(f"no tokenizer at {path} and no texts to train one")
    tokenizer = train_tokenizer(texts, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_local(path):  # one object write: atomic on an object store
        path.write_text(tokenizer.to_str(pretty=True))
        return tokenizer
    # Write then rename, so a crash never leaves a half-written tokenizer.json.
    partial = path.with_name(f".{path.name}.{time.time_ns()}.partial")
    tokenizer.save(str(partial))
    partial.replace(path)
    return tokenizer


def token_id(tokenizer: Tokenizer, token: str) -> int:
    """The id of a token the pipeline needs, with an error that says which is missing."""
    found = tokenizer.token_to_id(token)
    if found is None:
        raise KeyError(f"tokenizer has no {token!r} token")
    return found


def document_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A copy that encodes special-token strings found in document text as plain text.

    Why: source files quote "<|endoftext|>" and "<|user|>" (tokenizer code does); in
    pretraining text those are characters, not control tokens, or a document could end
    itself early or fake a chat turn. The copy leaves the caller's tokenizer unchanged.
    """
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.encode_special_tokens = True
    return copy
