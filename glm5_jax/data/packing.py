"""Turn tokenized documents into fixed-length rows the model can train on.

Why next-token pairs are made before packing: each document (its tokens plus
`<|endoftext|>`) becomes `inputs = tokens[:-1]`, `targets = tokens[1:]`. Packing then
concatenates these pairs and cuts rows of `seq_len` (grain's concat-then-split), so a
document longer than a row is split into chunks without losing the prediction at the
cut, and no target ever comes from another document. Each chunk is its own segment:
`segment_ids` count 1, 2, ... within a row (0 = padding) and `positions` restart at 0,
so attention masked by segment id never crosses documents.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np
from tokenizers import Tokenizer

from glm5_jax.data.tokenizer import END_OF_TEXT_TOKEN, document_tokenizer, token_id

TEXT_FEATURE = "text"


class TokenizeDocument(grain.transforms.Map):
    """A corpus record -> {"inputs", "targets"}: int32 next-token pairs of one document.

    Special-token strings inside the text are encoded as plain text (see
    `document_tokenizer`); the document's end is the real `<|endoftext|>` id.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = document_tokenizer(tokenizer)
        self._end_of_text_id = token_id(tokenizer, END_OF_TEXT_TOKEN)

    def map(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        text = record[TEXT_FEATURE]
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        tokens = np.asarray(ids + [self._end_of_text_id], dtype=np.int32)
        return {"inputs": tokens[:-1], "targets": tokens[1:]}


def has_tokens(example: dict[str, np.ndarray]) -> bool:
    """False for an empty document, which has no next-token pair to train on."""
    return example["inputs"].shape[0] > 0


def pack_documents(examples: grain.IterDataset, seq_len: int) -> grain.IterDataset:
    """Rows of exactly seq_len tokens: inputs, targets and per-feature segment ids and
    positions (`inputs_segment_ids`, `inputs_positions`, ...), padded with 0.

    Grain's iterator state covers the packer's buffer, so checkpoints restore exactly.
    """
    packed = grain.experimental.ConcatThenSplitIterDataset(
        examples, length_struct={"inputs": seq_len, "targets": seq_len}
    )
    return _JsonRestorablePacking(packed)


class _JsonRestorablePacking(grain.IterDataset):
    """Makes the packer's state survive a JSON round trip (as grain's own orbax
    checkpoint handler stores it).

    Why: in grain 0.2.18 the packer marks "no partly used document" with the tuple
    (-1, -1) and tests for it with `!=`; JSON gives back the list [-1, -1], so a state
    saved with no partial document restored as one and silently dropped the next
    document. Turning the slices back into tuples before restoring fixes that.
    """

    def __iter__(self) -> grain.DatasetIterator:
        return _JsonRestorablePackingIterator(self._parent.__iter__())


class _JsonRestorablePackingIterator(grain.DatasetIterator):
    def __next__(self):
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state["remainder_slices"] = {
            feature: tuple(bounds) for feature, bounds in state["remainder_slices"].items()
        }
        self._parent.set_state(state)


def training_batch(packed: dict[str, np.ndarray],
                   loss_only_after: int | None = None) -> dict[str, np.ndarray]:
    """Batched packer output -> the batch the train step reads.

    Returns int32 `inputs`, `targets`, `segment_ids`, `positions`, each
    [batch, seq_len], and float32 `loss_mask` (1 where `targets` is a real next token;
    with `loss_only_after`, a token id, only where the input is also that token).
    """
    segment_ids = packed["inputs_segment_ids"].astype(np.int32)
    inputs = packed["inputs"].astype(np.int32)
    loss_mask = segment_ids > 0
    if loss_only_after is not None:
        loss_mask &= inputs == loss_only_after
    return {
        "inputs": inputs,
        "targets": packed["targets"].astype(np.int32),
        "segment_ids": segment_ids,
        "positions": packed["inputs_positions"].astype(np.int32),
        "loss_mask": loss_mask.astype(np.float32),
    }
