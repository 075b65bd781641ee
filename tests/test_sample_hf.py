"""Greedy generation from a random tiny HF checkpoint equals transformers' generate; sharded
decode (batch over data, heads over tensor, experts over expert) equals unsharded decode."""

import numpy as np
import pytest

pytest.importorskip("transformers", reason="needs the [hf] extra (installed by the test command)")

import jax
from hf_reference import make_hf_checkpoint

import glm5_jax
from glm5_jax.generate import generate

MAX_NEW = 10
# index_topk=8 (the helper's default): the 5-token prompt decodes across the sparse threshold,
# the 20-token one is sparse from the start; layers 2 reuses layer 1's selection.
PROMPT_LENGTHS = (5, 20)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hf_generate"))
    hf_model = make_hf_checkpoint(path, seed=7)
    model, variables = glm5_jax.load_hf(path)
    rng = np.random.RandomState(11)
    # avoid the EOS id in prompts so both sides see the same inputs
    prompts = [list(rng.randint(2, model.config.vocab_size, size=n)) for n in PROMPT_LENGTHS]
    ours = generate(model, variables, prompts, MAX_NEW)
    return hf_model, model, variables, prompts, ours


def test_greedy_matches_transformers_generate(checkpoint):
    import torch

    hf_model, model, _, prompts, ours = checkpoint
    for prompt, generation in zip(prompts, ours):
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW, do_sample=False,
                                    eos_token_id=model.config.eos_token_id, pad_token_id=0)
        expected = out[0, len(prompt):].tolist()
        if model.config.eos_token_id in expected:  # transformers pads after EOS; we stop
            expected = expected[:expected.index(model.config.eos_token_id) + 1]
        assert generation.token_ids == expected


def test_sharded_decode_matches_unsharded(checkpoint):
    from glm5_jax.sharding import make_mesh

    _, model, variables, prompts, ours = checkpoint
    mesh = make_mesh("data=2,expert=2,tensor=2", jax.devices()[:8])
    sharded = generate(model, variables, prompts, MAX_NEW, mesh=mesh)
    for a, b in zip(sharded, ours):
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-5)


def test_command_line_on_the_checkpoint(checkpoint, tmp_path):
    """``python -m glm5_jax.generate`` (in process): a text prompt through tokenizer.json and an
    id prompt, batched; JSON lines carry the same ids and logprobs as the API."""
    import io
    import json
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers

    from glm5_jax.generate.__main__ import main

    hf_model, model, _, prompts, ours = checkpoint
    directory = tmp_path / "ckpt"
    hf_model.save_pretrained(str(directory))
    vocab = {f"t{i}": i for i in range(model.config.vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(directory / "tokenizer.json"))
    out = io.StringIO()
    text = " ".join(f"t{i}" for i in prompts[0])
    code = main(["--checkpoint", str(directory), "--prompt", text, "--prompt_ids", ",".join(map(str, prompts[1])),
                 "--max_new_tokens", str(MAX_NEW), "--json"], out=out)
    assert code == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["prompt_ids"] for line in lines] == prompts
    assert [line["token_ids"] for line in lines] == [g.token_ids for g in ours]
    np.testing.assert_allclose(lines[0]["logprobs"], ours[0].logprobs, rtol=1e-6)
    assert lines[0]["text"] == tokenizer.decode(ours[0].token_ids)
    shutil.rmtree(directory)
