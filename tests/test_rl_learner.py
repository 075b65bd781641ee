"""The learner on an 8-device mesh: parameters laid out by the logical rules, the DSA indexer
(and MTP) frozen, everything else updated, its loss and gradient norm equal to a one-device
computation. Every objective (direct double-sided IS, AReaL's decoupled PPO uncapped and
capped over several minibatch updates and epochs, truncated IS, and one with the reference
KL) is checked by number against an independent computation on the same batch, update by
update: the loss and its metrics, the gradient (the parameters move exactly as AdamW moves
them with the reference gradients), the proximal policy fixed at the batch's start (so the
clipped ratio leaves 1 after the first update and the clip acts), the log-prob mismatch on
the held version's tokens, and the direction of the update. An optimizer reset zeroes the
moments and keeps the step counts."""

import functools
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from glm5_jax import GLM5Model, init_variables
from glm5_jax.rl.learner import Learner, LearnerState, make_rl_optimizer, rl_train_step
from glm5_jax.rl.optimizer import is_step_count, reset_moments
from glm5_jax.rl.policy import policy_model_config
from glm5_jax.rl.weight_receiver import WeightReceiver
from glm5_jax.rl.weight_sender import WeightSender
from glm5_jax.rl.weight_shards import sharding_by_path
from glm5_jax.model import logical_partition_specs
from glm5_jax.sharding import make_mesh

REPO = Path(__file__).resolve().parents[1]


def config_for(objective: str, kl_coef: float = 0.0):
    spec = importlib.util.spec_from_file_location("rl_base", REPO / "experiments" / "rl" / "tiny_async.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model_overrides = {"num_hidden_layers": 1, "first_k_dense_replace": 1, "num_mtp_layers": 1,
                              "mtp_num_steps": 1}
    config.mesh = "data=4,tensor=2"
    config.group_size, config.groups_per_batch, config.seq_len = 4, 2, 24  # > index_topk: DSA on
    config.objective, config.kl_coef = objective, kl_coef
    config.learning_rate = 1e-2
    return config


def batch(rows: int, seq: int, seed: int = 0, versions: tuple[int, ...] = (0, 1)):
    """Random tokens; each row's tokens sampled by one of ``versions`` (cycling over rows)."""
    rng = np.random.default_rng(seed)
    mask = (rng.random((rows, seq)) < 0.7).astype(np.float32)
    row_versions = np.resize(np.asarray(versions, np.int32), rows)[:, None]
    return {"input_ids": rng.integers(3, 100, (rows, seq)).astype(np.int32),
            "targets": rng.integers(3, 100, (rows, seq)).astype(np.int32),
            "loss_mask": mask,
            "rollout_logprobs": np.full((rows, seq), -4.6, np.float32),
            "advantages": rng.normal(size=(rows, seq)).astype(np.float32),
            "token_versions": np.where(mask > 0, row_versions, -1).astype(np.int32)}


def leaves_by_path(tree):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


# Every objective by number --------------------------------------------------------------------
# Off-policy ratios pi_theta / pi_rollout planted per token: on both sides of every threshold
# (band [0.8, 1.28], caps 1.2 and 1.3), including between 1.2 and 1.28 and just under 0.8,
# and each at least 0.04 from one, so the learner's and the reference's float32 log-probs
# (different programs, ~1e-6 apart) cannot disagree on which tokens are masked.
PLANTED_RATIOS = (0.64, 0.76, 0.905, 1.105, 1.24, 1.65)
TEMPERATURE = 0.8  # not 1: a learner that forgot the temperature would differ
HELD_VERSION = 3  # the policy version the learner holds; rows alternate HELD_VERSION and older
CASES = {  # case -> config changes
    "direct_double_sided": {"objective": "direct_double_sided"},
    "direct_double_sided_minibatches": {"objective": "direct_double_sided", "minibatches": 4},
    "decoupled": {"objective": "decoupled", "minibatches": 2},
    "decoupled_capped_epochs": {"objective": "decoupled", "behaviour_weight_cap": 1.3,
                                "minibatches": 2, "ppo_epochs": 2},
    "truncated_is": {"objective": "truncated_is", "truncation_cap": 1.2},
    "direct_double_sided_kl": {"objective": "direct_double_sided", "kl_coef": 0.5},
}
MARGIN = 1e-4  # no ratio this close to a threshold: float32 noise (~1e-6) cannot flip a token


def objective_config(**changes):
    config = config_for("direct_double_sided")
    config.temperature = TEMPERATURE
    # Linear-ish AdamW so the update carries the gradient's size, not only its sign: the first
    # step moves each weight by -lr * g / (|g| + eps), with |g| ~ 1e-3 here; no clipping.
    config.learning_rate, config.adam_eps, config.max_grad_norm = 1e-3, 1e-3, 1e6
    config.weight_decay = 0.0
    for key, value in changes.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def policy():
    """The learner tests' model (same init compilation), a reference log-prob function and its
    VJP: an objective's gradient is the VJP of the token log-probs with dLoss/dlogp."""
    config = objective_config()
    model_config = policy_model_config(config, 128, 0, 1, 2)
    model = GLM5Model(model_config)
    variables = init_variables(model, jax.random.PRNGKey(0))
    routing = variables.get("routing", {})
    rng = np.random.default_rng(7)  # fixed: tokens and targets
    rows, seq = config.groups_per_batch * config.group_size, config.seq_len
    input_ids = rng.integers(3, 128, (rows, seq)).astype(np.int32)
    targets = rng.integers(3, 128, (rows, seq)).astype(np.int32)

    def logprobs(params, input_ids, targets, temperature):
        logits = model.apply({"params": params, "routing": routing}, input_ids)
        log_p = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
        token = jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
        return token, -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)

    def vjp(params, input_ids, targets, temperature, cotangent):
        return jax.vjp(lambda p: logprobs(p, input_ids, targets, temperature)[0], params)[1](cotangent)[0]

    logprobs_of, vjp_of = jax.jit(logprobs), jax.jit(vjp)
    fixed = (jnp.asarray(input_ids), jnp.asarray(targets), jnp.float32(TEMPERATURE))
    return {"model": model, "variables": variables, "routing": routing,
            "input_ids": input_ids, "targets": targets, "rows": rows, "seq": seq,
            "logprobs_of": logprobs_of, "vjp_of": vjp_of,
            "logprobs": lambda params: logprobs_of(params, *fixed),
            "vjp": lambda params, cotangent: vjp_of(params, *fixed, cotangent)}


def global_norm(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree))))


def planted_batch(policy, seed: int):
    """A batch whose rollout log-probs sit at planted ratios from the current policy; even rows
    were sampled by the held version, odd rows by the one before."""
    rng = np.random.default_rng(seed)
    rows, seq = policy["rows"], policy["seq"]
    logp, _ = policy["logprobs"](policy["variables"]["params"])
    mask = (rng.random((rows, seq)) < 0.7).astype(np.float32)
    ratio = rng.choice(PLANTED_RATIOS, size=(rows, seq))
    advantages = np.repeat(rng.choice([-1.5, -0.5, 0.5, 1.5], size=(rows, 1)), seq, axis=1)
    versions = np.where(np.arange(rows)[:, None] % 2 == 0, HELD_VERSION, HELD_VERSION - 1)
    return {"input_ids": policy["input_ids"], "targets": policy["targets"], "loss_mask": mask,
            "rollout_logprobs": ((np.asarray(logp, np.float64) - np.log(ratio)) * mask).astype(np.float32),
            "advantages": (advantages * mask).astype(np.float32),
            "token_versions": np.where(mask > 0, versions, -1).astype(np.int32)}


def reference_objective(config, logp, rollout, advantages, mask, reference_logp=None, proximal=None):
    """(expected metrics incl. loss, the size of the loss's terms, dLoss/dlogp per token, the
    ratios each threshold is applied to), in float64, written from the objectives' definitions
    (not with glm5_jax.rl.objectives). ``proximal`` None: the proximal policy is the current one."""
    logp, rollout = np.asarray(logp, np.float64), np.asarray(rollout, np.float64)
    proximal = logp if proximal is None else np.asarray(proximal, np.float64)
    n = mask.sum()
    r = np.exp(logp - rollout)
    if config.objective == "direct_double_sided":
        keep = ((r >= 1 - config.is_eps_low) & (r <= 1 + config.is_eps_high) & (mask > 0)).astype(float)
        per_token, dlogp, kept, ratio = -keep * r * advantages, -keep * r * advantages, keep, r
        thresholds = {"band": (r, (1 - config.is_eps_low, 1 + config.is_eps_high))}
    elif config.objective == "decoupled":  # PPO's clip around the proximal policy, times w
        behaviour = np.exp(proximal - rollout)
        weight = np.minimum(behaviour, config.behaviour_weight_cap) \
            if config.behaviour_weight_cap > 0 else behaviour
        r_prox = np.exp(logp - proximal)
        inside = (r_prox >= 1 - config.clip_eps) & (r_prox <= 1 + config.clip_eps)
        unclipped, clipped = r_prox * advantages, np.clip(r_prox, 1 - config.clip_eps, 1 + config.clip_eps) * advantages
        live = ((unclipped <= clipped) | inside).astype(float)
        per_token = -weight * np.minimum(unclipped, clipped)
        dlogp, kept, ratio = -live * weight * r_prox * advantages, live, r_prox * weight
        thresholds = {"clip": (r_prox, (1 - config.clip_eps, 1 + config.clip_eps)),
                      "cap": (behaviour, (config.behaviour_weight_cap,))}
    else:
        weight = np.minimum(r, config.truncation_cap)
        per_token, dlogp, kept, ratio = -weight * advantages * logp, -weight * advantages, mask, r
        thresholds = {"cap": (r, (config.truncation_cap,))}
    loss = np.sum(per_token * mask) / n
    metrics = {"objective": loss, "is_kept_fraction": np.sum(kept * mask) / n,
               "mean_is_ratio": np.sum(ratio * mask) / n,
               "proximal_drift": np.sum(np.abs(logp - proximal) * mask) / n}
    scale = np.sum(np.abs(per_token) * mask) / n  # the terms' size: the loss may cancel below it
    if config.kl_coef > 0:
        d = np.asarray(reference_logp, np.float64) - logp
        kl = np.sum((np.exp(d) - d - 1) * mask) / n
        metrics["kl_to_reference"] = kl
        loss += config.kl_coef * kl
        scale += config.kl_coef * kl
        dlogp = dlogp + config.kl_coef * (1 - np.exp(d))
    metrics["loss"] = loss
    return metrics, scale, (dlogp * mask / n).astype(np.float32), thresholds


def frozen_path(path: str) -> bool:
    return "indexer" in path or "mtp_" in path


class AdamReference:
    """AdamW (no decay, no clipping) in float64, one update at a time; frozen weights stay."""

    def __init__(self, config, params) -> None:
        self.config = config
        paths_and_leaves, self.treedef = jax.tree_util.tree_flatten_with_path(params)
        self.paths = [jax.tree_util.keystr(p) for p, _ in paths_and_leaves]
        self.start = leaves_by_path(params)
        self.moved = {path: 0.0 for path in self.paths}
        self.m = {path: 0.0 for path in self.paths}
        self.v = {path: 0.0 for path in self.paths}
        self.count = 0

    def reset_moments(self) -> None:
        self.m = {path: 0.0 for path in self.paths}
        self.v = {path: 0.0 for path in self.paths}

    def update(self, grads: dict[str, np.ndarray]):
        """Apply one update; returns the parameters after it (float32, as a pytree)."""
        b1, b2, lr, eps = (self.config.adam_b1, self.config.adam_b2, self.config.learning_rate,
                           self.config.adam_eps)
        self.count += 1
        for path in self.paths:
            if frozen_path(path):
                continue
            g = np.asarray(grads[path], np.float64)
            self.m[path] = b1 * self.m[path] + (1 - b1) * g
            self.v[path] = b2 * self.v[path] + (1 - b2) * g * g
            m_hat, v_hat = self.m[path] / (1 - b1 ** self.count), self.v[path] / (1 - b2 ** self.count)
            self.moved[path] = self.moved[path] - lr * m_hat / (np.sqrt(v_hat) + eps)
        return self.params()

    def params(self):
        return self.treedef.unflatten([jnp.asarray((self.start[p] + self.moved[p]).astype(np.float32))
                                       for p in self.paths])


def reference_step(config, logprobs, vjp, adam: AdamReference, batch, held_version, reference_logp=None):
    """One learner step, independently: the batch's diagnostics at the start, then each update's
    expected metrics, the size of its loss terms and its gradient, on minibatch rows k::m."""
    minibatches, epochs = config.get("minibatches", 1), config.get("ppo_epochs", 1)
    mask, advantages = batch["loss_mask"].astype(np.float64), batch["advantages"].astype(np.float64)
    rollout = batch["rollout_logprobs"]
    start, entropy = (np.asarray(x, np.float64) for x in logprobs(adam.params()))
    held = mask * (batch["token_versions"] == held_version)
    diagnostics = {"entropy": np.sum(entropy * mask) / mask.sum(),
                   "rollout_logprob_gap": np.sum(np.abs(start - rollout) * mask) / mask.sum(),
                   "logprob_mismatch": np.sum(np.abs(start - rollout) * held) / held.sum(),
                   "logprob_mismatch_tokens": held.sum()}
    updates, thresholds = [], []
    for update in range(minibatches * epochs):
        rows = np.arange(update % minibatches, mask.shape[0], minibatches)
        params = adam.params()
        logp = np.asarray(logprobs(params)[0], np.float64)
        expected, scale, cotangent, limits = reference_objective(
            config, logp[rows], rollout[rows], advantages[rows], mask[rows],
            None if reference_logp is None else reference_logp[rows],
            None if minibatches * epochs == 1 else start[rows])
        full = np.zeros(mask.shape, np.float32)
        full[rows] = cotangent
        grads = leaves_by_path(vjp(params, jnp.asarray(full)))
        expected["grad_norm"] = global_norm(grads)
        updates.append((expected, scale, np.mean(np.abs(logp[rows]) * mask[rows]) / mask[rows].mean(),
                        grads))
        thresholds.append({name: (ratio[mask[rows] > 0], limit) for name, (ratio, limit) in limits.items()})
        adam.update(grads)
    return diagnostics, updates, thresholds


def assert_metrics(metrics, expected, scale, where, logprob_size=1.0, update=None):
    """float32 (1e-5 relative) on every metric; the loss against the size of its terms, and
    differences of log-probs against the size of the log-probs they difference."""
    for name, value in expected.items():
        got = metrics[name] if update is None else np.asarray(metrics[name])[update]
        size = {"loss": scale, "objective": scale, "proximal_drift": logprob_size,
                "rollout_logprob_gap": logprob_size, "logprob_mismatch": logprob_size}.get(name, abs(value))
        assert abs(got - value) <= 1e-5 * size + 1e-7, (where, name, got, value)


def assert_clear_of_thresholds(thresholds, where):
    """No ratio so close to a threshold that float noise could decide its side."""
    for update, limits in enumerate(thresholds):
        for name, (ratios, edges) in limits.items():
            for edge in edges:
                if edge > 0:
                    closest = float(np.min(np.abs(ratios - edge))) if ratios.size else np.inf
                    assert closest > MARGIN, f"{where}: update {update + 1}: a ratio is {closest:.1e} from {name} {edge}"


def clip_eps_that_acts(config, policy, batch) -> float:
    """A PPO clip range that the second update's ratios straddle, in their widest gap near the
    middle (so the clip masks some tokens and no ratio sits on its edge). The ratios of the
    first two updates do not depend on the clip (the first is at the proximal point)."""
    probe = config.copy_and_resolve_references()
    probe.clip_eps = 10.0
    _, _, thresholds = reference_step(probe, policy["logprobs"], policy["vjp"],
                                      AdamReference(probe, policy["variables"]["params"]), batch, HELD_VERSION)
    deviation = np.sort(np.abs(thresholds[1]["clip"][0] - 1.0))
    middle = deviation[len(deviation) // 4: 3 * len(deviation) // 4]
    widest = int(np.argmax(np.diff(middle)))
    return float((middle[widest] + middle[widest + 1]) / 2)


def test_update_freezes_indexer_and_mtp_and_shards_by_the_rules(tmp_path, policy):
    # The default objective runs end to end in test_rl_end_to_end; here the decoupled one over
    # two minibatches with a reference KL through the sharded, AOT-compiled Learner (one
    # compilation: the learner is the slow part of this suite); every objective is checked
    # unsharded below. Then the optimizer reset.
    config = objective_config(objective="decoupled", kl_coef=0.1, minibatches=2, temperature=1.0)
    model_config = policy_model_config(config, 128, 0, 1, 2)
    variables = init_variables(GLM5Model(model_config), jax.random.PRNGKey(0))
    data = batch(8, 24, versions=(0, 7))
    # The same step's numbers computed on one device, outside the learner.
    inputs = (jnp.asarray(data["input_ids"]), jnp.asarray(data["targets"]), jnp.float32(config.temperature))
    adam = AdamReference(config, variables["params"])
    start_logp, _ = policy["logprobs_of"](variables["params"], *inputs)
    diagnostics, updates, _ = reference_step(
        config, lambda p: policy["logprobs_of"](p, *inputs),
        lambda p, cotangent: policy["vjp_of"](p, *inputs, cotangent), adam, data, 0,
        np.asarray(start_logp, np.float64))

    learner = Learner(config, model_config, variables)
    kernel = learner.state.params["dense_layers"]["block"]["layer_0"]["self_attn"]["q_b_proj"]["kernel"]
    assert "tensor" in str(kernel.sharding.spec)  # heads over the tensor axis
    before = leaves_by_path(learner.state.params)
    assert learner.held_policy_version() == 0
    metrics = learner.train(data)  # the learner reports the mean over the batch's updates
    expected = {name: np.mean([u[0][name] for u in updates]) for name in updates[0][0]}
    assert_metrics(metrics, {**diagnostics, **expected}, np.mean([u[1] for u in updates]),
                   "sharded learner", logprob_size=updates[0][2])
    assert metrics["logprob_mismatch_tokens"] == np.sum(data["token_versions"] == 0) > 0
    assert updates[0][0]["kl_to_reference"] == 0.0 < updates[1][0]["kl_to_reference"]
    assert metrics["grad_norm"] > 0
    after = leaves_by_path(learner.state.params)
    frozen = [p for p in before if "indexer" in p or "mtp_" in p]
    assert any("indexer" in p for p in frozen) and any("mtp_" in p for p in frozen)
    for path in before:
        changed = not np.array_equal(before[path], after[path])
        assert changed == (path not in frozen), path
        # float32 (1e-5); atol: a few ulps of float32 parameters of size ~1 in after - before.
        np.testing.assert_allclose(after[path] - before[path], adam.moved[path] if path not in frozen else 0,
                                   rtol=1e-5, atol=1e-6, err_msg=path)

    # After one step (sync_every=1) the learner holds version 1: no token of this batch is its.
    assert learner.held_policy_version() == 1
    assert "logprob_mismatch" not in learner.train(data)
    assert learner.train(batch(8, 24, versions=(2,)))["logprob_mismatch_tokens"] > 0

    # The optimizer reset zeroes Adam's moments and keeps its step count (3 batches x 2 updates).
    learner.reset_optimizer()
    counts, moments = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(learner.state.opt_state)[0]:
        (counts if is_step_count(path) else moments).append(np.asarray(leaf))
    assert counts and all(int(count) == 6 for count in counts)
    assert moments and all(not np.any(moment) for moment in moments)
    assert jax.tree.map(lambda x: x.sharding, learner.state.opt_state) == learner.state_shardings.opt_state

    # Weight push round trip: a worker (on 2 devices, tensor-sharded) receives exactly the
    # learner's weights (tests/test_rl_weight_sync.py checks every leaf, bit for bit).
    sender = WeightSender(streams=2)
    worker_mesh = make_mesh("tensor=2", jax.devices()[6:])
    receiver = WeightReceiver([sender.address], sharding_by_path(worker_mesh, logical_partition_specs(
        learner.model)), worker_id=0, streams=2)
    try:
        sender.publish(3, learner.variables)
        sender.wait_delivered(3, timeout_s=120)
        assert receiver.refresh() and receiver.version == 3 and not receiver.refresh()
        assert sender.metrics()["weight_sync_bytes"] > 0
        np.testing.assert_array_equal(leaves_by_path(receiver.variables)["['params']['embed_tokens']"],
                                      np.asarray(learner.state.params["embed_tokens"]))
    finally:
        receiver.close()
        sender.close()


@pytest.mark.parametrize("case", list(CASES))
def test_every_objective_matches_an_independent_computation(policy, case):
    config = objective_config(**CASES[case])
    batch = planted_batch(policy, seed=11)
    if config.objective == "decoupled":
        config.clip_eps = clip_eps_that_acts(config, policy, batch)
    steps = 2 if config.kl_coef > 0 else 1  # the KL is 0 at the reference: step once first
    optimizer = make_rl_optimizer(config, policy["variables"]["params"])
    params = policy["variables"]["params"]
    state = LearnerState(jnp.zeros((), jnp.int32), params, optimizer.init(params), policy["routing"],
                         jax.tree.map(jnp.copy, params) if config.kl_coef > 0 else {})
    step = jax.jit(functools.partial(rl_train_step, model=policy["model"], optimizer=optimizer,
                                     config=config))
    logp0, _ = policy["logprobs"](params)
    adam = AdamReference(config, params)
    all_updates, all_thresholds = [], []
    for k in range(steps):
        diagnostics, updates, thresholds = reference_step(
            config, policy["logprobs"], policy["vjp"], adam, batch, HELD_VERSION,
            np.asarray(logp0, np.float64))
        assert_clear_of_thresholds(thresholds, case)
        state, metrics = step(state, batch, jnp.int32(HELD_VERSION))
        assert int(state.step) == k + 1  # one learner step per batch, whatever the updates
        assert_metrics({name: float(metrics[name]) for name in diagnostics}, diagnostics, 0.0,
                       f"{case} step {k + 1}", logprob_size=updates[0][2])
        for u, (expected, scale, logprob_size, _) in enumerate(updates):
            assert_metrics(metrics, expected, scale, f"{case} step {k + 1} update {u + 1}",
                           logprob_size, update=u)
        assert np.asarray(metrics["grad_norm"])[0] > 0  # later ones may be clipped to nothing
        all_updates += updates
        all_thresholds += thresholds
        if k == 0:
            first_step = {name: float(np.mean(value)) for name, value in metrics.items()}
    if config.kl_coef > 0:
        assert metrics["kl_to_reference"][0] > 1e-6  # the second step really is away from the reference

    # Tokens of the held version: on the first step their mismatch is the planted |log ratio|
    # (the weights did not change between sampling and the batch's start).
    held = (batch["token_versions"] == HELD_VERSION) & (batch["loss_mask"] > 0)
    planted = np.abs(np.asarray(logp0, np.float64) - batch["rollout_logprobs"])[held].mean()
    assert first_step["logprob_mismatch"] == pytest.approx(planted, rel=1e-5)
    assert first_step["logprob_mismatch_tokens"] == held.sum() > 0

    updates_per_batch = config.get("minibatches", 1) * config.get("ppo_epochs", 1)
    drifts = [expected["proximal_drift"] for expected, *_ in all_updates]
    if updates_per_batch == 1:
        assert all(drift == 0.0 for drift in drifts)  # the proximal policy is the current one
    else:
        # The proximal policy stays at the batch's start: the ratio pi_theta / pi_prox is 1 on
        # the first update and departs from it on every later one.
        assert drifts[0] == 0.0 and min(drifts[1:]) > 1e-4
    if config.objective == "decoupled":
        # ... far enough that PPO's clip acts: tokens stop carrying gradient.
        assert all_updates[0][0]["is_kept_fraction"] == 1.0
        assert min(expected["is_kept_fraction"] for expected, *_ in all_updates[1:]) < 0.9

    # The parameters moved exactly as AdamW moves them with the reference gradients.
    before, after = leaves_by_path(params), leaves_by_path(state.params)
    assert any(frozen_path(p) for p in before)
    for path in before:
        # float32 (1e-5); atol: a few ulps of float32 parameters of size ~1 in after - before.
        np.testing.assert_allclose(after[path] - before[path], adam.moved[path] if not frozen_path(path) else 0,
                                   rtol=1e-5, atol=1e-6, err_msg=f"{case}: {path}")

    # And the update raised the (weighted) log-prob of positive-advantage actions and lowered
    # the negative ones': the first-order change of the loss is negative.
    logp1, _ = policy["logprobs"](state.params)
    change = (np.asarray(logp1, np.float64) - np.asarray(logp0, np.float64)) * batch["loss_mask"]
    _, _, cotangent0, _ = reference_objective(config, logp0, batch["rollout_logprobs"],
                                              batch["advantages"].astype(np.float64),
                                              batch["loss_mask"].astype(np.float64), logp0)
    advantages = batch["advantages"]
    assert float(np.sum(cotangent0 * change)) < 0
    pushed = cotangent0 != 0
    assert np.mean(change[pushed & (advantages > 0)]) > np.mean(change[pushed & (advantages < 0)])


def test_decoupled_objective_refuses_a_single_update_per_batch(policy):
    with pytest.raises(ValueError, match=r"objective='decoupled' needs more than one update.*minibatches"):
        Learner(objective_config(objective="decoupled"), policy["model"].config, policy["variables"])
    with pytest.raises(ValueError, match=r"minibatches=3 must divide the batch's rows .* allowed: \[1, 2, 4, 8\]"):
        Learner(objective_config(minibatches=3), policy["model"].config, policy["variables"])
    with pytest.raises(ValueError, match="ppo_epochs=0 must be >= 1"):
        Learner(objective_config(ppo_epochs=0), policy["model"].config, policy["variables"])


# The optimizer reset --------------------------------------------------------------------------
def test_optimizer_reset_zeroes_the_moments_and_keeps_the_step_count_and_schedule():
    config = objective_config()
    params = {"layer": {"kernel": jnp.ones((3, 2)), "scale": jnp.ones(2)},
              "indexer": {"kernel": jnp.ones((2, 2))}}
    rng = np.random.default_rng(0)
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
             for _ in range(4)]
    optimizer = make_rl_optimizer(config, params)
    state = optimizer.init(params)
    for gradient in grads[:3]:
        _, state = optimizer.update(gradient, state, params)
    state = reset_moments(optimizer, state, params)
    updates, _ = optimizer.update(grads[3], state, params)
    # Adam at step 4 from zero moments: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected by
    # step 4's factors (a state re-initialised from scratch would correct by step 1's: lr * g/|g|).
    g = np.asarray(grads[3]["layer"]["kernel"], np.float64)
    b1, b2, lr, eps = config.adam_b1, config.adam_b2, config.learning_rate, config.adam_eps
    m_hat, v_hat = (1 - b1) * g / (1 - b1 ** 4), (1 - b2) * g * g / (1 - b2 ** 4)
    np.testing.assert_allclose(updates["layer"]["kernel"], -lr * m_hat / (np.sqrt(v_hat) + eps), rtol=1e-5)
    np.testing.assert_array_equal(updates["indexer"]["kernel"], 0.0)  # frozen stays frozen

    # A schedule's position is a count too: after the reset the warm-up does not restart.
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=10)
    warming = optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(schedule))
    state = warming.init(params)
    for gradient in grads[:3]:
        _, state = warming.update(gradient, state, params)
    fresh_updates, _ = warming.update(grads[3], warming.init(params), params)
    kept_updates, _ = warming.update(grads[3], reset_moments(warming, state, params), params)
    # Zero moments and step 4 of the schedule (lr 0.3) against step 1 (lr 0) from scratch.
    assert not np.any(np.asarray(fresh_updates["layer"]["kernel"]))
    m_hat, v_hat = 0.1 * g / (1 - 0.9 ** 4), 0.001 * g * g / (1 - 0.999 ** 4)
    np.testing.assert_allclose(kept_updates["layer"]["kernel"], 0.3 * m_hat / (np.sqrt(v_hat) + 1e-8),
                               rtol=1e-5)
