"""A pretrained policy's BPE tokenizer behind the RL tokenizer interface.

RL from a checkpoint (``config.init_from``) must speak the tokenizer the checkpoint was
trained with: its ``tokenizer.json``. Rollouts keep the sampled ids exactly as sampled; this
class only encodes what the environment says (prompts, failing tests) and decodes what the
policy wrote for the sandbox. Special-token strings inside environment text (an error message
quoting ``<|endoftext|>``) are encoded as plain text, never as control tokens.

The ids the loop needs are named by token, with the defaults of ``glm5_jax.data``'s tokenizer:
documents there are separated by ``<|endoftext|>``, so it opens a prompt (BOS) and ends an
answer (EOS); ``<|pad|>`` pads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from glm5_jax.data.tokenizer import document_tokenizer, load_tokenizer, token_id


class BpeTokenizer:
    def __init__(self, path: str | os.PathLike, bos: str, eos: str, pad: str) -> None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: RL with tokenizer='checkpoint' needs the "
                                    "tokenizer.json that init_from was trained with")
        tokenizer = load_tokenizer(path)
        try:
            self.bos_id, self.eos_id, self.pad_id = (token_id(tokenizer, t) for t in (bos, eos, pad))
        except KeyError as error:
            raise ValueError(f"{path}: {error.args[0]}; set config.special_tokens "
                             "(bos / eos / pad) to tokens it has") from None
        self._plain = document_tokenizer(tokenizer)
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._plain.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._plain.decode(list(ids), skip_special_tokens=True)
