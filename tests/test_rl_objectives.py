"""Off-policy objectives, advantages and credit assignment on hand-computed examples."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm5_jax.rl.advantages import group_advantages
from glm5_jax.rl.credit_assignment import (discounted_turn_returns, repair_discounted_rewards,
                                           turn_advantages, turn_returns)
from glm5_jax.rl.objectives import (decoupled_loss, direct_double_sided_loss, double_sided_mask,
                                    policy_objective, reference_kl, truncated_is_loss)


def test_double_sided_mask_keeps_only_ratios_inside_the_band():
    ratio = jnp.array([0.5, 0.79, 0.8, 1.0, 1.28, 1.29, 3.0])
    keep = double_sided_mask(ratio, eps_low=0.2, eps_high=0.28)
    assert keep.tolist() == [False, False, True, True, True, False, False]


def test_direct_double_sided_masks_instead_of_clipping():
    # Four policy tokens and one feedback token. Ratios: 1.0, 1.25, 2.0 (masked), 0.5 (masked).
    rollout = jnp.log(jnp.array([[0.5, 0.4, 0.25, 0.5, 0.9]]))
    current = jnp.log(jnp.array([[0.5, 0.5, 0.5, 0.25, 0.1]]))
    advantages = jnp.array([[1.0, 1.0, 1.0, -2.0, 5.0]])
    loss_mask = jnp.array([[1, 1, 1, 1, 0]])
    out = direct_double_sided_loss(current, rollout, advantages, loss_mask, 0.2, 0.28)
    # Kept: tokens 0 and 1 -> -(1.0 * 1 + 1.25 * 1) / 4 policy tokens.
    assert float(out.loss) == pytest.approx(-(1.0 + 1.25) / 4, rel=1e-6)
    assert float(out.kept_fraction) == pytest.approx(0.5)
    assert float(out.mean_ratio) == pytest.approx((1.0 + 1.25 + 2.0 + 0.5) / 4, rel=1e-6)

    grad = jax.grad(lambda lp: direct_double_sided_loss(lp, rollout, advantages, loss_mask,
                                                        0.2, 0.28).loss)(current)
    # d/dlogp of -r*A/4 is -r*A/4 on kept tokens; masked and feedback tokens get exactly zero
    # (PPO's clip would still push the 0.5-ratio token with negative advantage; masking does not).
    np.testing.assert_allclose(np.asarray(grad), [[-0.25, -1.25 / 4, 0.0, 0.0, 0.0]], rtol=1e-6)


def test_decoupled_objective_at_the_proximal_point_is_weighted_policy_gradient():
    rollout = jnp.log(jnp.array([[0.5, 0.2]]))
    proximal = jnp.log(jnp.array([[0.25, 0.4]]))  # behaviour weights 0.5 and 2.0
    advantages = jnp.array([[2.0, -1.0]])
    mask = jnp.array([[1, 1]])
    out = decoupled_loss(proximal, proximal, rollout, advantages, mask, clip_eps=0.2)
    assert float(out.loss) == pytest.approx(-(0.5 * 2.0 + 2.0 * -1.0) / 2, rel=1e-6)
    capped = decoupled_loss(proximal, proximal, rollout, advantages, mask, clip_eps=0.2,
                            behaviour_weight_cap=1.0)
    assert float(capped.loss) == pytest.approx(-(0.5 * 2.0 + 1.0 * -1.0) / 2, rel=1e-6)
    # Beyond the clip range with positive advantage, the token stops pushing.
    moved = proximal + jnp.log(jnp.array([[1.5, 1.0]]))
    grad = jax.grad(lambda lp: decoupled_loss(lp, proximal, rollout, advantages, mask, 0.2).loss)(moved)
    assert float(grad[0, 0]) == 0.0 and float(grad[0, 1]) != 0.0


def test_truncated_is_caps_the_weight_but_keeps_every_token():
    rollout = jnp.log(jnp.array([[0.1, 0.5]]))
    current = jnp.log(jnp.array([[0.5, 0.5]]))  # ratios 5.0 and 1.0
    advantages = jnp.array([[1.0, 1.0]])
    mask = jnp.array([[1, 1]])
    grad = jax.grad(lambda lp: truncated_is_loss(lp, rollout, advantages, mask, cap=2.0).loss)(current)
    np.testing.assert_allclose(np.asarray(grad), [[-2.0 / 2, -1.0 / 2]], rtol=1e-6)


def test_policy_objective_dispatch_and_errors():
    # Three policy tokens with ratios 5, 10/9, 5/6 (log-probs 0.5 each) and one feedback token.
    logp = jnp.log(jnp.array([[0.5, 0.5, 0.5, 0.25]]))
    rollout = jnp.log(jnp.array([[0.1, 0.45, 0.6, 0.25]]))
    advantages = jnp.array([[1.0, -2.0, 0.5, 3.0]])
    mask = jnp.array([[1, 1, 1, 0]])
    ratios, adv = np.array([5.0, 10 / 9, 5 / 6]), np.array([1.0, -2.0, 0.5])

    tol = 1e-6  # float32 sums of terms of both signs, each at most 5 in size

    def loss(name, **settings):
        return float(policy_objective(name, logp, rollout, advantages, mask, **settings).loss)

    def direct(keep):  # keep: which of the three tokens the band keeps
        return -np.sum(np.where(keep, ratios * adv, 0.0)) / 3

    # Every setting reaches its objective: the band's edges, the truncation cap, the
    # behaviour-weight cap and the PPO clip each change the loss as computed by hand.
    assert loss("direct_double_sided") == pytest.approx(direct([False, True, True]), abs=tol)
    assert loss("direct_double_sided", eps_low=0.1) == pytest.approx(direct([False, True, False]), abs=tol)
    assert loss("direct_double_sided", eps_high=0.05) == pytest.approx(direct([False, False, True]), abs=tol)
    for cap in (2.0, 1.0):
        expected = -np.sum(np.minimum(ratios, cap) * adv * math.log(0.5)) / 3
        settings = {} if cap == 2.0 else {"truncation_cap": cap}
        assert loss("truncated_is", **settings) == pytest.approx(expected, abs=tol)
    for cap in (0.0, 1.0):  # at the proximal point the PPO ratio is 1 and the weight pi / pi_rollout
        weight = np.minimum(ratios, cap) if cap else ratios
        assert loss("decoupled", proximal_logprobs=logp, behaviour_weight_cap=cap) == pytest.approx(
            -np.sum(weight * adv) / 3, abs=tol)
    moved = jnp.log(jnp.array([[0.75]]))  # PPO ratio 1.5 against the proximal 0.5, weight 1
    half, one = jnp.log(jnp.array([[0.5]])), jnp.ones((1, 1))
    for clip_eps, expected in ((0.2, -1.2), (0.6, -1.5)):
        out = policy_objective("decoupled", moved, half, one, one, proximal_logprobs=half, clip_eps=clip_eps)
        assert float(out.loss) == pytest.approx(expected, abs=tol)
    with pytest.raises(ValueError, match="proximal_logprobs"):
        policy_objective("decoupled", logp, rollout, advantages, mask)
    with pytest.raises(ValueError, match="allowed"):
        policy_objective("ppo", logp, rollout, advantages, mask)


def test_reference_kl_is_zero_at_the_reference_and_k3_elsewhere():
    logp = jnp.log(jnp.array([[0.5, 0.25]]))
    mask = jnp.array([[1, 0]])
    assert float(reference_kl(logp, logp, mask)) == 0.0
    ref = jnp.log(jnp.array([[0.25, 0.9]]))
    d = math.log(0.25) - math.log(0.5)
    assert float(reference_kl(logp, ref, mask)) == pytest.approx(math.exp(d) - d - 1, rel=1e-6)


def test_group_advantages():
    returns = np.array([[1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5], [3.0, 1.0, 2.0, 2.0]])
    adv = group_advantages(returns)
    np.testing.assert_allclose(adv[0], [1, -1, 1, -1], rtol=1e-6)
    np.testing.assert_array_equal(adv[1], 0.0)  # no signal in a uniform group
    std = np.std([3.0, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(adv[2], np.array([1.0, -1.0, 0.0, 0.0]) / std, rtol=1e-6)
    np.testing.assert_allclose(group_advantages(returns, normalize_by_std=False)[2], [1, -1, 0, 0])


def test_discounted_turn_returns_credit_the_final_outcome_backwards():
    np.testing.assert_allclose(discounted_turn_returns([0.0, 0.0, 1.0], 0.5), [0.25, 0.5, 1.0])
    np.testing.assert_allclose(discounted_turn_returns([0.1, 0.0, 1.0], 0.5), [0.35, 0.5, 1.0])
    np.testing.assert_allclose(discounted_turn_returns([1.0], 0.9), [1.0])
    with pytest.raises(ValueError):
        discounted_turn_returns([1.0], 1.5)


def test_turn_advantages_use_the_episode_baseline():
    # Sample A passed at turn 2 of 2 (G = [0.5, 1]); sample B passed at once (G = [1]);
    # sample C never passed (G = [0, 0]).
    a, b, c = np.array([0.5, 1.0]), np.array([1.0]), np.array([0.0, 0.0])
    out = turn_advantages([a, b, c])
    episode = np.array([0.5, 1.0, 0.0])
    mean, std = episode.mean(), episode.std()
    np.testing.assert_allclose(out[0], (a - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(out[1], (b - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(out[2], (c - mean) / std, rtol=1e-6)
    assert out[1][0] > out[0][0]  # passing at once beats needing a repair
    np.testing.assert_array_equal(turn_advantages([np.zeros(2), np.zeros(1)])[0], 0.0)


def test_a_repaired_pass_earns_less_than_a_first_try_pass():
    gamma = 0.5
    np.testing.assert_allclose(repair_discounted_rewards([0.0, 0.0, 1.0], gamma), [0.0, 0.0, 0.25])
    # Turn j's reward is worth gamma^(j-1), then credited back gamma per turn.
    np.testing.assert_allclose(turn_returns([0.2, 0.0, 1.0], gamma),
                               [0.2 + 0.5 * 0.0 + 0.25 * 0.25, 0.5 * 0.0 + 0.5 * 0.25, 0.25])
    first_try = turn_returns([1.0], gamma)  # R
    repaired = turn_returns([0.0, 1.0], gamma)  # [gamma^2 R, gamma R]
    never = turn_returns([0.0, 0.0], gamma)
    np.testing.assert_allclose(first_try, [1.0])
    np.testing.assert_allclose(repaired, [0.25, 0.5])
    advantages = turn_advantages([first_try, repaired, never])
    # The repair earns less than a first-try pass, more than the failed attempt before it,
    # which still earns more than an episode that never passed.
    assert advantages[0][0] > advantages[1][1] > advantages[1][0] > advantages[2][0]
    assert advantages[1][1] > 0 > advantages[1][0]
    # Two passing samples, one needing a repair, are no longer "the same outcome": the
    # first-try pass is preferred (the undiscounted returns gave both 1 and no signal).
    both_pass = turn_advantages([turn_returns([1.0], gamma), turn_returns([0.0, 1.0], gamma)])
    assert both_pass[0][0] > 0 > both_pass[1][1]
    np.testing.assert_allclose(turn_returns([0.0, 1.0], 1.0), [1.0, 1.0])  # gamma=1: no discount
    with pytest.raises(ValueError, match="gamma=1.5"):
        turn_returns([1.0], 1.5)
