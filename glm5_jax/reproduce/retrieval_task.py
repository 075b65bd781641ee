"""A synthetic long-context retrieval task a tiny model learns on CPU: multi-query associative
recall (Zoology's MQAR) in code-like filler.

A document is lines of small Python-looking statements; ``num_keys`` of them are assignments
``v.q = 7`` at random depths (distinct one-letter keys, one-digit values), and it ends asking
for them: ``assert v.q == 7``. Keys and values are chosen so the byte-level BPE cannot merge them
with their neighbours (the pre-tokenizer splits letters, punctuation and digits apart): a key is
one token, and a value is the same token(s) where it is set and where it is asked, so an answer
is a copy of the token after ``v.<key> =``. The filler has no entropy (a fixed cycle of lines
from a random start), so once it is learned the remaining loss is the random keys and values
and the answers, and an answer can only come from finding its key's line.

A training document asks for every key, in random order: up to ``num_keys`` retrieval targets
per document (the MQAR recipe: a dense retrieval signal; the experiment puts the loss on the
answers only). An evaluation prompt is a document with a given number of keys cut after its
first question, with more filler: keys at random depths of a prompt of a given token length.

Scoring is teacher-forced exact match: a prompt is correct when the model's argmax at every
answer token equals the answer, which is what greedy decoding of the answer would produce.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import random
import string
from collections.abc import Sequence
from pathlib import Path

import ml_collections

# The filler cycles through these lines in order (from a random start): once learned it costs
# no loss, so what is left to learn is the retrieval.
_FILLER = (
    "total = total + 1",
    "items.append(total)",
    "if total > 9:",
    "    total = 0",
    "for item in items:",
    "    count += item",
    "# update the counters",
)
KEYS = string.ascii_lowercase  # one letter between "." and " =": its own pre-token, one token
VALUES = string.digits  # one digit after " = " / " == ": the same pre-token in both places


@dataclasses.dataclass(frozen=True)
class RetrievalExample:
    prompt: str  # ends with the question, "assert v.q ==" (the answer carries its space)
    answer: str  # the value with its leading space, e.g. " 7"
    depth: float  # where the queried key sits in the prompt, 0 (start) .. 1 (end)


def _filler(rng: random.Random, count: int) -> list[str]:
    start = rng.randrange(len(_FILLER))
    return [_FILLER[(start + i) % len(_FILLER)] for i in range(count)]


def _keys(rng: random.Random, count: int) -> list[tuple[str, str]]:
    if count > len(KEYS):
        raise ValueError(f"num_keys={count} > {len(KEYS)} distinct keys")
    return [(name, rng.choice(VALUES)) for name in rng.sample(KEYS, count)]


def _document(rng: random.Random, filler: list[str], num_keys: int) -> tuple[RetrievalExample, str]:
    """The example (a prompt asking for one key) and the questions for the other keys, in
    random order (a training document appends them)."""
    keys = _keys(rng, num_keys)  # in the order they are set
    lines = list(filler)
    slots = sorted(rng.randrange(len(lines) + 1) for _ in keys)
    for offset, (slot, (name, value)) in enumerate(zip(slots, keys, strict=True)):
        lines.insert(slot + offset, f"v.{name} = {value}")
    asked = list(range(num_keys))
    rng.shuffle(asked)
    name, value = keys[asked[0]]
    position = next(i for i, line in enumerate(lines) if line.startswith(f"v.{name} = "))
    prompt = "\n".join(lines) + f"\nassert v.{name} =="
    rest = "".join(f"\nassert v.{keys[i][0]} == {keys[i][1]}" for i in asked[1:])
    return RetrievalExample(prompt, " " + value, position / max(len(lines) - 1, 1)), rest


def training_documents(task: ml_collections.ConfigDict) -> list[str]:
    """``task.num_documents`` complete documents (every key asked for, answered), each with
    ``task.min_keys`` .. ``task.num_keys`` keys and ``task.min_lines`` .. ``task.max_lines``
    filler lines (uniform): short documents with few keys are an easy retrieval (few positions
    to attend to, so a strong gradient toward the value) that starts the circuit the long ones
    with many keys refine; the longest reach the training length. A document with k keys is
    drawn with weight 1/k, so every key count has the same share of the answers."""
    rng = random.Random(task.seed)
    counts = range(task.min_keys, task.num_keys + 1)
    weights = [1 / k for k in counts]
    documents = []
    for _ in range(task.num_documents):
        num_keys = rng.choices(counts, weights)[0]
        filler = _filler(rng, rng.randint(task.min_lines, task.max_lines))
        example, rest = _document(rng, filler, num_keys)
        documents.append(example.prompt + example.answer + rest + "\n")
    return documents


def write_retrieval_corpus(directory: Path, task: ml_collections.ConfigDict) -> None:
    """The training documents as one JSONL file (the text-corpus builder reads it)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "retrieval.jsonl").open("w") as out:
        for text in training_documents(task):
            out.write(json.dumps({"text": text}) + "\n")


def evaluation_prompts(num_keys: int, tokenizer, length: int, count: int,
                       seed: int) -> list[RetrievalExample]:
    """``count`` prompts of at most ``length`` tokens with their answer (the filler takes every
    line that fits beside the key lines and the question), ``num_keys`` keys at random depths."""
    rng = random.Random(f"{seed}-{length}")
    key_tokens = (num_keys * len(tokenizer.encode("\nv.q = 7").ids)
                  + len(tokenizer.encode("\nassert v.q == 7").ids))
    lines_from: dict[int, int] = {}  # filler lines that fit, by the cycle's start line
    examples = []
    for _ in range(count):
        start = rng.randrange(len(_FILLER))
        if start not in lines_from:
            lines_from[start] = _filler_lines_within(tokenizer, start, length - key_tokens)
        filler = [_FILLER[(start + i) % len(_FILLER)] for i in range(lines_from[start])]
        examples.append(_document(rng, filler, num_keys)[0])
    return examples


def _filler_lines_within(tokenizer, start: int, budget: int) -> int:
    """How many filler lines from ``start`` encode to at most ``budget`` tokens, counted in one
    encoding of the running text (a line's tokens depend on the line break before it)."""
    lines = [_FILLER[(start + i) % len(_FILLER)] for i in range(max(budget, 0))]  # >= 1 token each
    encoding = tokenizer.encode("\n".join(lines))
    token_ends = [end for _, end in encoding.offsets]
    fitting, line_end = 0, 0
    for line in lines:
        line_end += len(line) + (1 if fitting else 0)
        if bisect.bisect_right(token_ends, line_end) > budget:
            break
        fitting += 1
    return fitting


def answer_positions(tokenizer, example: RetrievalExample) -> tuple[list[int], list[int]]:
    """(token ids of prompt + answer, indices of the answer's tokens): every token that ends
    after the prompt's last character belongs to the answer."""
    encoding = tokenizer.encode(example.prompt + example.answer)
    boundary = len(example.prompt)
    answer = [i for i, (_, end) in enumerate(encoding.offsets) if end > boundary]
    return list(encoding.ids), answer


def accuracy(correct: Sequence[bool]) -> float:
    return sum(correct) / len(correct) if correct else float("nan")
