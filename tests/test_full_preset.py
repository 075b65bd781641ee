"""The released-size config builds abstractly and lowers quickly thanks to the scanned stacks."""

import jax
import jax.numpy as jnp

import glm5_jax
from glm5_jax.config import glm5_full


def test_full_preset_lowers_with_long_context():
    model = glm5_jax.GLM5Model(glm5_full())
    abstract = glm5_jax.abstract_variables(model)
    stack = abstract["params"]["moe_layers"]["block"]["layer_0"]
    assert stack["mlp"]["experts"]["wi_gate"].shape == (75, 256, 6144, 2048)  # 75 scanned MoE layers
    ids = jax.ShapeDtypeStruct((1, 4096), jnp.int32)  # > index_topk: the sparse path is traced
    text = jax.jit(model.apply).lower(abstract, ids).as_text()
    # one scanned body per stack, not 78 unrolled layers
    assert text.count("stablehlo.while") <= 4
