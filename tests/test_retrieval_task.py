"""The long-context table's retrieval task (glm5_jax/reproduce/retrieval_task.py): the documents
and prompts say what the task claims (keys at random depths, one question, the answer is the
asked key's value), prompts reach the asked length, and the scored positions are the answer's."""

from __future__ import annotations

import re

import ml_collections
import pytest

from glm5_jax.data.tokenizer import train_tokenizer
from glm5_jax.reproduce.retrieval_task import (
    answer_positions,
    evaluation_prompts,
    training_documents,
)

SET = re.compile(r"^v\.([a-z]) = (\d)$", re.MULTILINE)
ASK = re.compile(r"^assert v\.([a-z]) == ?(\d)?$", re.MULTILINE)


def _task(**changes) -> ml_collections.ConfigDict:
    task = {"num_documents": 300, "num_keys": 6, "min_keys": 1, "min_lines": 0, "max_lines": 12, "seed": 3}
    return ml_collections.ConfigDict({**task, **changes})


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(training_documents(_task()), vocab_size=320)


def test_training_documents_ask_every_key_for_its_value():
    documents = training_documents(_task())
    assert len(documents) == 300
    counts = set()
    for document in documents:
        assigned = dict(SET.findall(document))
        asked = ASK.findall(document)
        counts.add(len(assigned))
        assert 1 <= len(assigned) <= 6
        assert sorted(name for name, _ in asked) == sorted(assigned)  # every key, once
        assert all(assigned[name] == value for name, value in asked)
        last_set = max(m.end() for m in SET.finditer(document))
        assert all(m.start() > last_set for m in ASK.finditer(document))  # questions after the keys
    assert counts == set(range(1, 7))


@pytest.mark.parametrize("keys", [1, 4])
def test_evaluation_prompts_reach_the_length_and_ask_for_one_assigned_key(tokenizer, keys):
    for length in (256, 1024):
        examples = evaluation_prompts(keys, tokenizer, length, 12, seed=1)
        depths = []
        for example in examples:
            assigned = dict(SET.findall(example.prompt))
            assert len(assigned) == keys
            (asked, value), = ASK.findall(example.prompt)
            assert value == "" and example.answer == " " + assigned[asked]
            tokens = len(tokenizer.encode(example.prompt + example.answer).ids)
            assert length - 12 <= tokens <= length, tokens  # filled up to the length, not past it
            depths.append(example.depth)
        assert min(depths) < 0.35 and max(depths) > 0.65  # needles at random depths, not one place
        assert examples == evaluation_prompts(keys, tokenizer, length, 12, seed=1)  # reproducible
    assert examples != evaluation_prompts(keys, tokenizer, 1024, 12, seed=2)


def test_answer_positions_are_the_answer_tokens(tokenizer):
    for example in evaluation_prompts(4, tokenizer, 256, 8, seed=0):
        ids, answer = answer_positions(tokenizer, example)
        assert answer == list(range(answer[0], len(ids)))  # the last tokens, " 7" or " ", "7"
        assert tokenizer.decode(ids[answer[0]:]) == example.answer
        assert tokenizer.decode(ids[:answer[0]]) == example.prompt
