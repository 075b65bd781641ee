"""Mixed precision in the train step: bfloat16 compute, float32 master weights (configurable).

Tracing only (no compile): the step's state keeps the parameter dtype, and the matmuls of the
traced program run in the compute dtype.
"""

from __future__ import annotations

from collections import Counter

import jax
import jax.extend
import jax.numpy as jnp
import pytest

from glm5_jax.sharding import activate
from glm5_jax.train.experiment import SPARSE
from glm5_jax.train.run_setup import BATCH_KEYS, build_run
from glm5_jax.train.testing import cpu_test_config, write_test_corpus
from glm5_jax.train.train_step import make_train_step


def _dot_dtypes(jaxpr) -> Counter:
    """How many matmuls (dot_general / ragged_dot) of a jaxpr take each left-operand dtype,
    sub-jaxprs (scan, cond, remat, custom VJPs) included."""
    found = Counter()
    for equation in jaxpr.eqns:
        if equation.primitive.name in ("dot_general", "ragged_dot"):
            found[str(equation.invars[0].aval.dtype)] += 1
        for sub in jax.extend.core.jaxprs_in_params(equation.params):
            found += _dot_dtypes(sub)
    return found


@pytest.mark.parametrize("compute, params", [("bfloat16", "float32"), ("float32", "float32")])
def test_compute_dtype_drives_the_matmuls_and_params_keep_theirs(tmp_path, compute, params):
    config = cpu_test_config(write_test_corpus(tmp_path / "corpus"), tmp_path / "data",
                             compute_dtype=compute, param_dtype=params)
    run = build_run(config, jax.devices()[:1])
    batch = {key: jax.ShapeDtypeStruct((config.batch_size, config.seq_len),
                                       jnp.float32 if key == "loss_mask" else jnp.int32)
             for key in BATCH_KEYS}
    step = make_train_step(run.model_config, config, run.optimizer, run.schedule, SPARSE)
    with activate(run.mesh):
        state, metrics = jax.eval_shape(step, run.abstract_state, batch)
        jaxpr = jax.make_jaxpr(step)(run.abstract_state, batch)
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(params)}
    assert metrics["loss"].dtype == jnp.float32  # losses are reduced in float32
    counts = _dot_dtypes(jaxpr.jaxpr)
    if compute == "float32":
        assert set(counts) == {"float32"}, counts
    else:
        # The bulk runs in bfloat16; float32 matmuls may remain where precision matters
        # (router scores, the indexer loss's recomputed attention distributions).
        assert counts["bfloat16"] > counts["float32"], counts
