"""RL from a pretrained checkpoint: its architecture, weights and BPE tokenizer.

The checkpoint is an HF directory (``save_hf``) with a byte-level BPE ``tokenizer.json`` from
``glm5_jax.data``, standing in for the main job's workdir or a released model.
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from glm5_jax.config import get_preset
from glm5_jax.convert.hf_checkpoint import save_hf
from glm5_jax.data.tokenizer import END_OF_TEXT_TOKEN, train_tokenizer
from glm5_jax.model import GLM5Model, init_variables
from glm5_jax.rl.experiment_setup import make_tokenizer
from glm5_jax.rl.loop import train
from glm5_jax.rl.policy import policy_model_config
from glm5_jax.rl.tasks import tiny_task_suite
from glm5_jax.rl.warm_start import warm_start_variables
from glm5_jax.sample.checkpoint import load_model_config
from glm5_jax.train.experiment import load_experiment

REPO = Path(__file__).resolve().parents[1]
VOCAB = 320
ARCHITECTURE = {"num_hidden_layers": 2, "first_k_dense_replace": 1, "num_mtp_layers": 0}


def base_config(checkpoint: Path):
    config = load_experiment(REPO / "experiments" / "rl" / "tiny_async.py")
    config.init_from = str(checkpoint)
    config.tokenizer = "checkpoint"
    config.model = "full"  # ignored with init_from: the checkpoint's own config wins
    return config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pretrained")
    texts = [f"{task.prompt}{task.reference}\n" for task in tiny_task_suite((0, 1, 2, 3))] * 4
    train_tokenizer(texts, VOCAB).save(str(directory / "tokenizer.json"))
    model_config = get_preset("tiny").replace(vocab_size=VOCAB, bos_token_id=1, eos_token_id=1,
                                              pad_token_id=0, **ARCHITECTURE)
    model = GLM5Model(model_config)
    variables = init_variables(model, jax.random.PRNGKey(3))
    save_hf(model, variables, str(directory))
    return directory, variables


def test_checkpoint_tokenizer_round_trips_task_text_and_names_its_special_ids(checkpoint):
    directory, _ = checkpoint
    tokenizer = make_tokenizer(base_config(directory))
    text = "#add 3\ndef f(x):return x+3"
    ids = tokenizer.encode(text)
    assert len(ids) < len(text)  # merges, not characters
    assert tokenizer.decode(ids) == text
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 1, 0)
    # An error message quoting a control token stays text; the answer's EOS is dropped on decode.
    assert tokenizer.eos_id not in tokenizer.encode(f"got {END_OF_TEXT_TOKEN}")
    assert tokenizer.decode(ids + [tokenizer.eos_id]) == text


def test_bad_tokenizer_settings_name_the_field(checkpoint):
    directory, _ = checkpoint
    config = base_config(directory)
    config.special_tokens.bos = "<s>"
    with pytest.raises(ValueError, match="special_tokens"):
        make_tokenizer(config)
    config = base_config(directory)
    config.init_from = ""
    with pytest.raises(ValueError, match="needs init_from"):
        make_tokenizer(config)
    config.tokenizer = "sentencepiece"
    with pytest.raises(ValueError, match=r"allowed: \['char', 'checkpoint'\]"):
        make_tokenizer(config)


def test_policy_takes_the_checkpoint_architecture_and_refuses_a_larger_vocabulary(checkpoint):
    directory, _ = checkpoint
    config = base_config(directory)
    model_config = policy_model_config(config, 300, 1, 1, 0)
    assert model_config.num_hidden_layers == 2 and model_config.vocab_size == VOCAB
    assert model_config.to_dict() == load_model_config(str(directory)).replace(
        bos_token_id=1, eos_token_id=1, pad_token_id=0).to_dict()
    with pytest.raises(ValueError, match="embeds 320"):
        policy_model_config(config, VOCAB + 1, 1, 1, 0)


def test_training_workdir_model_config_is_read_from_model_config_json(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    expected = get_preset("tiny").replace(vocab_size=512)
    (tmp_path / "model_config.json").write_text(json.dumps(expected.to_dict()))
    assert load_model_config(str(tmp_path)).to_dict() == expected.to_dict()
    with pytest.raises(FileNotFoundError, match="neither a training workdir"):
        load_model_config(str(tmp_path / "elsewhere"))


def test_warm_start_begins_from_the_checkpoint_weights(checkpoint, tmp_path):
    directory, saved = checkpoint
    config = base_config(directory)
    config.warm_start.steps = 0
    config.warm_start.cache_dir = str(tmp_path)
    tokenizer = make_tokenizer(config)
    model_config = policy_model_config(config, tokenizer.vocab_size, tokenizer.bos_id,
                                       tokenizer.eos_id, tokenizer.pad_id)
    tasks = tiny_task_suite((1,))
    variables, _ = warm_start_variables(config, model_config, tasks, tokenizer, lambda t: t.prompt,
                                        log=lambda _: None)
    for ours, theirs in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(saved["params"])):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    # Another starting checkpoint is another cache entry, not a stale hit.
    assert len(list(tmp_path.glob("warm_start_*.msgpack"))) == 1


def test_lock_step_rl_runs_from_the_checkpoint_with_its_tokenizer(checkpoint, tmp_path):
    directory, _ = checkpoint
    config = base_config(directory)
    config.update(mode="sync", num_workers=1, sandbox_workers=1, group_size=4, groups_per_order=1,
                  groups_per_batch=2, capacity_groups=2, seq_len=32, max_new_tokens=16,
                  total_steps=2, checkpoint_every=2, worker_start_timeout_s=600.0,
                  batch_timeout_s=600.0, compilation_cache_dir=str(REPO / ".jax_cache"))
    config.tasks.levels = (1,)
    config.warm_start.update(steps=2, batch_size=4, seq_len=32, cache_dir="")
    config.eval.every = 0
    record = train(config, tmp_path / "run", log=lambda _: None)
    assert record["step"] == 2 and record["policy_version"] == 2
    assert record["buffer/consumed"] == 16
    assert np.isfinite(record["learner/loss"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["init_from"] == str(directory) and saved["tokenizer"] == "checkpoint"
