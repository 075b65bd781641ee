"""The checkpoint fingerprint: verified on restore when on, absent (and not required) when off."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from glm5_jax.train.checkpointing import Checkpointer
from glm5_jax.train.train_state import TrainState


class _Position:
    """Stands in for a grain iterator: a position that saves and restores."""

    def __init__(self, step: int = 0):
        self.state = {"step": step}

    def get_state(self):
        return dict(self.state)

    def start_prefetch(self):  # grain's restore calls it on a dataset iterator
        pass

    def set_state(self, state):  # grain hands back what get_state's JSON bytes held
        self.state = json.loads(state) if isinstance(state, (bytes, str)) else dict(state)


def _state(step: int) -> TrainState:
    rng = np.random.RandomState(step)
    return TrainState(step=jnp.asarray(step, jnp.int32),
                      params={"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)},
                      opt_state={"mu": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)},
                      routing={}, rng=jnp.asarray([1, 2], jnp.uint32),
                      skipped_steps=jnp.asarray(0, jnp.int32))


def _abstract(state: TrainState) -> TrainState:
    import jax
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


@pytest.mark.parametrize("fingerprint", [True, False])
def test_restore_round_trip_with_and_without_the_fingerprint(tmp_path, fingerprint):
    checkpoints = Checkpointer(tmp_path / "ckpt", keep=2, async_save=False, fingerprint=fingerprint)
    saved = _state(3)
    checkpoints.save(3, saved, _Position(7))
    checkpoints.manager.wait_until_finished()
    meta = json.loads((tmp_path / "ckpt" / "3" / "meta" / "metadata").read_text())
    assert (meta["fingerprint"] is not None) == fingerprint
    position = _Position()
    restored, step = checkpoints.restore_latest(_abstract(saved), position)
    assert step == 3 and position.state == {"step": 7}
    np.testing.assert_array_equal(restored.params["w"], saved.params["w"])
    np.testing.assert_array_equal(restored.opt_state["mu"], saved.opt_state["mu"])


def test_a_wrong_fingerprint_is_caught_and_the_step_set_aside(tmp_path):
    messages = []
    checkpoints = Checkpointer(tmp_path / "ckpt", keep=2, async_save=False, log=messages.append)
    saved = _state(5)
    checkpoints.save(5, saved, _Position())
    checkpoints.manager.wait_until_finished()
    meta_file = tmp_path / "ckpt" / "5" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["fingerprint"][0][0] ^= 1  # as if one leaf's bits came back different
    meta_file.write_text(json.dumps(meta))
    assert checkpoints.restore_latest(_abstract(saved), _Position()) is None
    assert any("fingerprint" in m for m in messages)
    assert (tmp_path / "corrupt_checkpoints").exists()
