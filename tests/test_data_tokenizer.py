"""Byte-level BPE tokenizer: exact round trips, stable special ids, load/save."""

from __future__ import annotations

import inspect
import json.decoder
import json.encoder
import textwrap

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from glm5_jax.data.synthetic_corpus import synthetic_documents
from glm5_jax.data.tokenizer import (
    END_OF_TEXT_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    document_tokenizer,
    load_tokenizer,
    token_id,
    train_or_load_tokenizer,
    train_tokenizer,
)

CODE_WITH_EVERYTHING = (
    "#!/usr/bin/env python3\n"
    "# -*- coding: utf-8 -*-\n"
    "def größe(x):\n"
    "\tif x:\t# tab-indented ✓\n"
    "\t\treturn '数据 😀 \\u00e9'  \r\n"
    "    return None  <|user|>hi<|assistant|>\n"
    "<|endoftext|>\x00\u200b  trailing   "
)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = synthetic_documents(200) + [CODE_WITH_EVERYTHING[:40]]
    return train_tokenizer(texts, vocab_size=512)


def test_round_trip_code_unicode_tabs_and_special_tokens(tokenizer):
    for text in [CODE_WITH_EVERYTHING, "", " ", "\t\t\n", "🚀" * 5, "<|pad|><|endoftext|>"]:
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_have_fixed_small_ids(tokenizer):
    assert token_id(tokenizer, PAD_TOKEN) == 0
    assert token_id(tokenizer, END_OF_TEXT_TOKEN) == 1
    for index, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == index
        assert tokenizer.encode(token).ids == [index]  # one id, not pieces


def test_vocab_size_is_the_requested_one_given_enough_text():
    texts = [inspect.getsource(module) for module in (json.decoder, json.encoder, textwrap)]
    assert train_tokenizer(texts, vocab_size=700).get_vocab_size() == 700


def test_vocab_size_never_exceeds_the_requested_one(tokenizer):
    # Too little text to learn every merge gives fewer ids, never more.
    assert tokenizer.get_vocab_size() <= 512


def test_document_tokenizer_reads_special_strings_as_text(tokenizer):
    text = "x = '<|endoftext|>'"
    ids = document_tokenizer(tokenizer).encode(text).ids
    assert token_id(tokenizer, END_OF_TEXT_TOKEN) not in ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    # The original tokenizer still treats it as the control token.
    assert token_id(tokenizer, END_OF_TEXT_TOKEN) in tokenizer.encode(text).ids


def test_train_or_load_saves_then_loads_the_same_tokenizer(tmp_path):
    path = tmp_path / "tok" / "tokenizer.json"
    trained = train_or_load_tokenizer(path, 300, synthetic_documents(50))
    assert path.exists()
    loaded = train_or_load_tokenizer(path, 300, texts=None)
    assert loaded.to_str() == trained.to_str()
    assert loaded.encode(CODE_WITH_EVERYTHING).ids == trained.encode(CODE_WITH_EVERYTHING).ids


def test_loads_a_foreign_tokenizer_json(tmp_path):
    # Stands in for GLM-5's tokenizer.json: a different model type and id layout.
    vocab = {"<unk>": 0, "hello": 1, "<|endoftext|>": 2}
    foreign = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    foreign.pre_tokenizer = pre_tokenizers.Whitespace()
    foreign.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded.encode("hello world").ids == [1, 0]
    assert token_id(loaded, END_OF_TEXT_TOKEN) == 2


def test_missing_tokenizer_without_texts_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        train_or_load_tokenizer(tmp_path / "absent.json", 300)


def test_vocab_too_small_for_bytes_and_specials():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=100)
