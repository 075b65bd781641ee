"""The grain pipeline: packing, determinism, host split and exact checkpoint restore,
on a tiny synthetic corpus built in a temporary directory."""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from glm5_jax.data.build_lock import exclusive_build_lock
from glm5_jax.data.config import DataConfig
from glm5_jax.data.pipeline import (
    PreparedCorpus,
    make_train_dataset,
    make_train_iterator,
    prepare_corpus,
    vocab_size_of,
)
from glm5_jax.data.synthetic_corpus import write_synthetic_corpus
from glm5_jax.data.tokenizer import END_OF_TEXT_TOKEN, document_tokenizer, token_id

SEQ_LEN = 32
BATCH_SIZE = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[DataConfig, PreparedCorpus, list[str]]:
    root = tmp_path_factory.mktemp("pipeline")
    documents = write_synthetic_corpus(root / "corpus", num_documents=60)
    config = DataConfig(
        data_dir=str(root / "data"),
        corpus=str(root / "corpus"),
        vocab_size=320,
        seq_len=SEQ_LEN,
        batch_size=BATCH_SIZE,
        seed=7,
        num_epochs=1,
        shard_index=0,
        shard_count=1,
    )
    return config, prepare_corpus(config), documents


def _batches(config, prepared, limit=None) -> list[dict[str, np.ndarray]]:
    iterator = iter(make_train_dataset(config, prepared))
    return [batch for _, batch in zip(range(limit or 10**9), iterator)]


def _expected_documents(prepared, documents) -> list[tuple[int, ...]]:
    """Each non-empty document's tokens with <|endoftext|>, as the pipeline makes them."""
    encoder = document_tokenizer(prepared.tokenizer)
    end = token_id(prepared.tokenizer, END_OF_TEXT_TOKEN)
    return [tuple(encoder.encode(text).ids) + (end,) for text in documents if text]


def _unpack(batches, end_id) -> list[tuple[int, ...]]:
    """Documents in arrival order, from the (input, target) pairs of every real token."""
    documents, current = [], []
    for batch in batches:
        for inputs, targets, mask in zip(batch["inputs"], batch["targets"], batch["loss_mask"]):
            for token, target in zip(inputs[mask > 0], targets[mask > 0]):
                current.append(int(token))
                if target == end_id:
                    documents.append(tuple(current) + (end_id,))
                    current = []
    assert not current, "a document was cut off"
    return documents


def test_batch_layout(corpus):
    config, prepared, _ = corpus
    batch = _batches(config, prepared, limit=1)[0]
    assert set(batch) == {"inputs", "targets", "segment_ids", "positions", "loss_mask"}
    for name in ("inputs", "targets", "segment_ids", "positions"):
        assert batch[name].shape == (BATCH_SIZE, SEQ_LEN) and batch[name].dtype == np.int32
    assert batch["loss_mask"].dtype == np.float32
    assert int(batch["inputs"].max()) < vocab_size_of(prepared) <= config.vocab_size


def test_packing_loses_and_repeats_no_token(corpus):
    config, prepared, documents = corpus
    end_id = token_id(prepared.tokenizer, END_OF_TEXT_TOKEN)
    unshuffled = dataclasses.replace(config, shuffle=False)
    # In corpus order, the unpacked stream is exactly the corpus.
    assert _unpack(_batches(unshuffled, prepared), end_id) == _expected_documents(
        prepared, documents
    )
    # Shuffled, every document still arrives exactly once per epoch, and some long
    # ones were split across rows.
    shuffled = _unpack(_batches(config, prepared), end_id)
    assert collections.Counter(shuffled) == collections.Counter(
        _expected_documents(prepared, documents)
    )
    assert max(map(len, shuffled)) > SEQ_LEN


def test_attention_never_crosses_documents(corpus):
    config, prepared, _ = corpus
    end_id = token_id(prepared.tokenizer, END_OF_TEXT_TOKEN)
    batches = _batches(config, prepared)
    for batch in batches:
        for inputs, targets, segments, positions, mask in zip(
            batch["inputs"],
            batch["targets"],
            batch["segment_ids"],
            batch["positions"],
            batch["loss_mask"],
        ):
            np.testing.assert_array_equal(mask, segments > 0)
            real = segments > 0
            # Padding only at the end, and it is zero everywhere.
            assert not np.any(real[np.argmin(real) :]) or real.all()
            assert not np.any(inputs[~real]) and not np.any(targets[~real])
            assert not np.any(positions[~real])
            # Segments are numbered 1, 2, ... and positions restart at 0 in each.
            assert np.all(np.diff(segments[real]) >= 0) and segments[0] in (0, 1)
            for segment in np.unique(segments[real]):
                where = np.flatnonzero(segments == segment)
                np.testing.assert_array_equal(where, np.arange(where[0], where[-1] + 1))
                np.testing.assert_array_equal(positions[where], np.arange(len(where)))
                # Inside a segment each target is the next input; a document's end
                # token is never an input, so no target comes from the next document.
                np.testing.assert_array_equal(targets[where[:-1]], inputs[where[1:]])
                assert end_id not in inputs[where]


def test_same_seed_same_batches_other_seed_other_batches(corpus):
    config, prepared, _ = corpus
    first, second = _batches(config, prepared, 6), _batches(config, prepared, 6)
    other = _batches(dataclasses.replace(config, seed=8), prepared, 6)
    for a, b in zip(first, second):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert any(not np.array_equal(a["inputs"], c["inputs"]) for a, c in zip(first, other))


def test_epochs_are_reshuffled_and_complete(corpus):
    config, prepared, documents = corpus
    end_id = token_id(prepared.tokenizer, END_OF_TEXT_TOKEN)
    two_epochs = _unpack(_batches(dataclasses.replace(config, num_epochs=2), prepared), end_id)
    expected = _expected_documents(prepared, documents)
    assert collections.Counter(two_epochs) == collections.Counter(expected * 2)
    assert two_epochs[: len(expected)] != two_epochs[len(expected) :]


def test_hosts_get_disjoint_complementary_documents(corpus):
    config, prepared, documents = corpus
    end_id = token_id(prepared.tokenizer, END_OF_TEXT_TOKEN)
    per_host = []
    for host in (0, 1):
        host_config = dataclasses.replace(config, shard_index=host, shard_count=2)
        batches = _batches(host_config, prepared)
        assert all(batch["inputs"].shape == (BATCH_SIZE // 2, SEQ_LEN) for batch in batches)
        per_host.append(collections.Counter(_unpack(batches, end_id)))
    assert not set(per_host[0]) & set(per_host[1])
    assert per_host[0] + per_host[1] == collections.Counter(
        _expected_documents(prepared, documents)
    )


def test_restored_state_continues_with_the_same_batches(corpus):
    config, prepared, _ = corpus
    forever = dataclasses.replace(config, num_epochs=None)  # crosses epoch boundaries
    dataset = make_train_dataset(forever, prepared)
    for steps_before in (0, 1, 5, 23):
        iterator = iter(dataset)
        for _ in range(steps_before):
            next(iterator)
        state = json.loads(json.dumps(iterator.get_state()))  # as a checkpoint stores it
        expected = [next(iterator) for _ in range(12)]
        restored = iter(make_train_dataset(forever, prepared))
        restored.set_state(state)
        for want, got in zip(expected, [next(restored) for _ in range(12)]):
            for name in want:
                np.testing.assert_array_equal(want[name], got[name])


def test_iterator_saves_and_restores_through_orbax(corpus, tmp_path):
    config, prepared, _ = corpus
    forever = dataclasses.replace(config, num_epochs=None)
    iterator = iter(make_train_dataset(forever, prepared))
    for _ in range(3):
        next(iterator)
    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = next(iterator)
    restored = iter(make_train_dataset(forever, prepared))
    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
        manager.restore(
            3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored))
        )
    got = next(restored)
    for name in expected:
        np.testing.assert_array_equal(expected[name], got[name])


def test_last_partial_batch_is_padded_not_dropped(corpus):
    config, prepared, _ = corpus
    batches = _batches(dataclasses.replace(config, batch_size=64), prepared)
    assert batches[-1]["inputs"].shape == (64, SEQ_LEN)
    assert not batches[-1]["loss_mask"][-1].any()  # an all-padding row


def test_batch_size_must_split_across_hosts(corpus):
    config, prepared, _ = corpus
    with pytest.raises(ValueError, match="divisible"):
        make_train_dataset(dataclasses.replace(config, batch_size=3, shard_count=2), prepared)


def test_entry_point_with_a_foreign_tokenizer_and_jax_topology(corpus, tmp_path):
    config, prepared, _ = corpus
    foreign = tmp_path / "glm" / "tokenizer.json"
    foreign.parent.mkdir()
    prepared.tokenizer.save(str(foreign))
    iterator = make_train_iterator(
        dataclasses.replace(config, tokenizer_path=str(foreign), shard_index=None, shard_count=None)
    )
    batch = next(iterator)
    assert batch["inputs"].shape == (BATCH_SIZE, SEQ_LEN)  # one process: the whole batch


def test_build_lock_lets_one_preparer_in_at_a_time(tmp_path):
    # flock locks belong to open files, so two threads contend like two processes.
    events: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with exclusive_build_lock(tmp_path):
            inside.set()
            time.sleep(0.2)
            events.append("first leaves")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait()
    with exclusive_build_lock(tmp_path):
        events.append("second enters")
    thread.join()
    assert events == ["first leaves", "second enters"]


def test_a_prebuilt_corpus_reads_like_the_one_it_was_built_as(tmp_path):
    """``arrayrecord:DIR`` and ``tfds:NAME/CONFIG`` open an existing build (no rebuild, no
    download) and give the same batches; a dataset that is not there says so."""
    from glm5_jax.data.prebuilt import prebuilt_builder
    from glm5_jax.errors import UserError

    write_synthetic_corpus(tmp_path / "corpus", num_documents=20, seed=1)
    built = DataConfig(data_dir=str(tmp_path / "data"), corpus=str(tmp_path / "corpus"), vocab_size=300,
                       seq_len=32, batch_size=2, shard_index=0, shard_count=1)
    prepared = prepare_corpus(built)
    expected = next(make_train_iterator(built, prepared))
    name = f"{prepared.builder.name}/{prepared.builder.builder_config.name}"
    for corpus_name in (f"arrayrecord:{prepared.builder.data_dir}", f"tfds:{name}"):
        config = dataclasses.replace(built, corpus=corpus_name, tokenizer_path=str(prepared.tokenizer_path))
        batch = next(make_train_iterator(config))
        for key in expected:
            np.testing.assert_array_equal(batch[key], expected[key], err_msg=f"{corpus_name} {key}")
    with pytest.raises(UserError, match="has no text feature 'body'"):
        prebuilt_builder(f"arrayrecord:{prepared.builder.data_dir}", built.data_dir, "body")
    with pytest.raises(UserError, match="is not prepared"):  # registered, never downloaded
        prebuilt_builder("tfds:mnist", str(tmp_path / "empty"), "text")
    with pytest.raises(UserError, match="TFDS has no dataset"):
        prebuilt_builder("tfds:no_such_dataset_xyz", str(tmp_path / "empty"), "text")


def test_loss_only_after_keeps_the_loss_on_the_tokens_after_one_token(corpus):
    config, prepared, _ = corpus
    plain = _batches(config, prepared, limit=2)
    # The most frequent real input token, as text: a marker that surely occurs.
    inputs = np.concatenate([b["inputs"][b["loss_mask"] > 0] for b in plain])
    marker_id = int(np.bincount(inputs).argmax())
    marker = document_tokenizer(prepared.tokenizer).decode([marker_id])
    assert document_tokenizer(prepared.tokenizer).encode(marker).ids == [marker_id]
    masked = _batches(dataclasses.replace(config, loss_only_after=marker), prepared, limit=2)
    for before, after in zip(plain, masked, strict=True):
        for name in ("inputs", "targets", "segment_ids", "positions"):
            np.testing.assert_array_equal(before[name], after[name])
        expected = (before["segment_ids"] > 0) & (before["inputs"] == marker_id)
        np.testing.assert_array_equal(after["loss_mask"], expected.astype(np.float32))
    assert sum(b["loss_mask"].sum() for b in masked) > 0
    with pytest.raises(ValueError, match="not one"):
        _batches(dataclasses.replace(config, loss_only_after="two words"), prepared, limit=1)
