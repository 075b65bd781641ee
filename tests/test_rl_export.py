"""``python -m glm5_jax.rl.export``: an RL run's kept policy as an HF checkpoint directory.

A run directory is made as the loop makes it (config.json, snapshots written with
``write_eval_snapshot``) from a freshly initialised policy; the export must load back (the
HF loader) to the same weights and the same logits, pick the last snapshot by default or
the one asked for, and refuse what is not an RL run with a one-line error.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from test_rl_end_to_end import small_config

from glm5_jax import load_hf
from glm5_jax.errors import UserError
from glm5_jax.model import GLM5Model
from glm5_jax.rl.eval_snapshots import write_eval_snapshot
from glm5_jax.rl.experiment_setup import make_tokenizer
from glm5_jax.rl.export import export_policy
from glm5_jax.rl.policy import policy_model_config
from glm5_jax.train.testing import REPO


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl_run")
    config, _ = small_config(tmp)
    tokenizer = make_tokenizer(config)
    model_config = policy_model_config(config, tokenizer.vocab_size, tokenizer.bos_id,
                                       tokenizer.eos_id, tokenizer.pad_id)
    model = GLM5Model(model_config)
    ids = jnp.ones((1, 8), jnp.int32)
    workdir = tmp / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json(indent=2))
    snapshots = {}
    for step, seed in ((0, 0), (20, 1)):
        variables = jax.device_get(nn.unbox(model.init(jax.random.PRNGKey(seed), ids)))
        write_eval_snapshot(workdir, variables, step, policy_version=step, wall_time=float(step),
                            samples=32 * step)
        snapshots[step] = variables
    return workdir, model, snapshots


def logits(model, variables):
    ids = jnp.arange(1, 13, dtype=jnp.int32)[None, :]
    return np.asarray(model.apply(variables, ids))


def test_the_export_loads_back_to_the_same_policy(run_dir, tmp_path):
    workdir, model, snapshots = run_dir
    written = export_policy(workdir, tmp_path / "hf")
    assert written["step"] == 20 and written["tokenizer"] is None  # the last; char tokenizer
    loaded_model, loaded = load_hf(str(tmp_path / "hf"))
    assert loaded_model.config.vocab_size == model.config.vocab_size
    np.testing.assert_array_equal(logits(loaded_model, loaded), logits(model, snapshots[20]))
    assert not np.allclose(logits(model, snapshots[0]), logits(model, snapshots[20]))


def test_a_step_is_chosen_or_refused_by_name(run_dir, tmp_path):
    workdir, model, snapshots = run_dir
    assert export_policy(workdir, tmp_path / "hf0", step=0)["step"] == 0
    loaded_model, loaded = load_hf(str(tmp_path / "hf0"))
    np.testing.assert_array_equal(logits(loaded_model, loaded), logits(model, snapshots[0]))
    with pytest.raises(UserError, match=r"--step=7: no snapshot of that step; kept: \[0, 20\]"):
        export_policy(workdir, tmp_path / "hf7", step=7)


def test_what_is_not_an_rl_run_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "glm5_jax.rl.export", f"--workdir={tmp_path}",
                             f"--out={tmp_path / 'out'}"], cwd=REPO, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 2
    assert f"{tmp_path} has no config.json: is it an RL run directory?" in result.stderr
    assert "Traceback" not in result.stderr
