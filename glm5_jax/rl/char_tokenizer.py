"""A character-level tokenizer for the tiny task suite.

Why characters: the tiny policy has to learn short programs in minutes on a CPU. With one
token per character, a solution like ``def f(x):return x+3`` is 19 tokens from an alphabet of
printable ASCII, every string has exactly one encoding (so "token in, token out" is trivially
true), and no tokenizer has to be trained or stored. Larger models use the BPE tokenizer of
``glm5_jax.data`` through the same two methods.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

BOS_ID, EOS_ID, PAD_ID = 0, 1, 2
_SPECIALS = 3
ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))  # newline + printable ASCII
VOCAB_SIZE = 128  # 3 specials + 96 characters, padded to a multiple of 64 for even sharding


class CharTokenizer:
    bos_id, eos_id, pad_id = BOS_ID, EOS_ID, PAD_ID
    vocab_size = VOCAB_SIZE

    def __init__(self) -> None:
        self._ids = {ch: i + _SPECIALS for i, ch in enumerate(ALPHABET)}

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; characters outside the alphabet become '?' (never an error: error
        messages from the sandbox may contain anything)."""
        unknown = self._ids["?"]
        return [self._ids.get(ch, unknown) for ch in text]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special and unused ids are skipped."""
        return "".join(ALPHABET[i - _SPECIALS] for i in ids
                       if _SPECIALS <= i < _SPECIALS + len(ALPHABET))


assert set(string.printable) - set(" \t\n\r\x0b\x0c") <= set(ALPHABET)
