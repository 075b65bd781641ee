"""Stop conditions checked on the host: stop token sequences and stop strings.

EOS and max_new_tokens are handled inside the compiled loop. Stop strings need the tokenizer
(a string can end in the middle of a token), so the host checks them between chunks of decode
steps; the kept tokens run up to and including the token that completes the stop string or
sequence, so the learner sees exactly what the policy produced (token in, token out).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

StopSpec = str | Sequence[str | Sequence[int]] | None


@dataclasses.dataclass(frozen=True)
class StopCriteria:
    token_sequences: tuple[tuple[int, ...], ...] = ()
    strings: tuple[str, ...] = ()
    decode: Callable[[list[int]], str] | None = None

    @classmethod
    def parse(cls, stop: StopSpec, decode: Callable[[list[int]], str] | None) -> StopCriteria:
        """``stop``: a string, or a list of strings and/or token-id sequences."""
        if stop is None:
            return cls()
        items = [stop] if isinstance(stop, str) else list(stop)
        strings = tuple(s for s in items if isinstance(s, str))
        sequences = tuple(tuple(int(t) for t in s) for s in items if not isinstance(s, str))
        if any(not s for s in strings + sequences):
            raise ValueError("stop entries must be non-empty strings or token-id sequences")
        if strings and decode is None:
            raise ValueError(f"stop strings {list(strings)} need a tokenizer to decode tokens; pass "
                             "tokenizer=... (anything with .decode(list[int]) -> str) or stop token-id sequences")
        return cls(sequences, strings, decode)

    def __bool__(self) -> bool:
        return bool(self.token_sequences or self.strings)

    def kept_length(self, tokens: Sequence[int]) -> int | None:
        """Smallest m such that tokens[:m] completes a stop sequence or string, else None."""
        tokens = list(tokens)
        best: int | None = None
        for seq in self.token_sequences:
            n = len(seq)
            for end in range(n, len(tokens) + 1):
                if best is not None and end >= best:
                    break
                if tuple(tokens[end - n:end]) == seq:
                    best = end
                    break
        if self.strings and self.decode is not None:
            text = self.decode(tokens)
            if any(s in text for s in self.strings):
                for end in range(1, (best or len(tokens)) + 1):
                    prefix = self.decode(tokens[:end])
                    if any(s in prefix for s in self.strings):
                        best = end
                        break
        return best
