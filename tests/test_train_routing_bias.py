"""The aux-loss-free routing-bias rule: its arithmetic, its pairing with the model's sown
loads, and that repeated application moves a real MoE layer's load toward balance."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from glm5_jax.config import tiny
from glm5_jax.model import GLM5Model
from glm5_jax.model.moe import MoE
from glm5_jax.train.routing_bias import (
    bias_load_key,
    collect_expert_loads,
    load_imbalance,
    update_routing_biases,
)


def test_rule_moves_each_bias_by_rate_against_its_load():
    routing = {"layer": {"mlp": {"gate": {"e_score_correction_bias": jnp.zeros((2, 4))}}}}
    loads = {"layer/mlp/expert_load": jnp.asarray([[10.0, 0.0, 5.0, 5.0], [4.0, 4.0, 4.0, 4.0]])}
    new = update_routing_biases(routing, loads, rate=0.01)
    bias = np.asarray(new["layer"]["mlp"]["gate"]["e_score_correction_bias"])
    np.testing.assert_allclose(bias, [[-0.01, 0.01, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])


def test_every_routing_bias_of_the_model_has_a_sown_load():
    """The path pairing holds for the scanned MoE stack and the (shared) MTP module."""
    model = GLM5Model(tiny())
    tokens = jnp.zeros((1, 8), jnp.int32)

    def loads_and_routing():
        variables = model.init(jax.random.PRNGKey(0), tokens)
        _, state = model.apply(variables, tokens, return_mtp=True, mutable=["intermediates"])
        return collect_expert_loads(state["intermediates"]), variables["routing"]

    loads, routing = jax.eval_shape(loads_and_routing)
    biases = traverse_util.flatten_dict(routing)
    assert len(biases) == 3  # two scanned MoE block layers and the MTP layer
    for path, bias in biases.items():
        assert loads[bias_load_key(path)].shape == bias.shape


def test_bias_rule_balances_a_real_moe_layer():
    """Start from a bias that sends every token to experts 0 and 1 and apply the rule after
    each forward pass: the layer's own sown loads must even out."""
    config = tiny()
    layer = MoE(config)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, config.hidden_size))
    variables = layer.init(jax.random.PRNGKey(0), x)
    skewed = jnp.zeros((config.n_routed_experts,)).at[:2].set(0.2)
    routing = {"gate": {"e_score_correction_bias": skewed}}

    @jax.jit
    def loads_of(routing):
        _, state = layer.apply({"params": variables["params"], "routing": routing}, x,
                               mutable=["intermediates"])
        return collect_expert_loads(state["intermediates"])

    @jax.jit
    def rule_step(routing):
        """One step of the rule, and the imbalance the new bias produces."""
        routing = update_routing_biases(routing, loads_of(routing), rate=0.004)
        return routing, load_imbalance(loads_of(routing))

    imbalance = [float(load_imbalance(loads_of(routing)))]
    for _ in range(150):
        routing, value = rule_step(routing)
        imbalance.append(float(value))
    # All tokens on 2 of 8 experts is max/mean = 4. A fixed-size sign step cannot settle
    # exactly; it ends oscillating around balance with an amplitude set by the rate.
    assert imbalance[0] == 4.0
    assert max(imbalance[-20:]) < 1.5, imbalance
    total = int(sum(np.asarray(v).sum() for v in loads_of(routing).values()))
    assert total == 4 * 32 * config.num_experts_per_tok  # the rule moves choices, not counts
