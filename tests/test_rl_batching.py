"""From assembled groups to the learner's arrays: the policy version of every sampled token
(per token where the sampler records it, else its turn's) and the credit of every turn."""

import numpy as np

from glm5_jax.rl.batching import build_batch, sampled_token_versions
from glm5_jax.rl.buffer import AssembledGroup
from glm5_jax.rl.trajectory import Trajectory, Turn

GAMMA = 0.5


def episode(name: str, turns: list[Turn]) -> Trajectory:
    return Trajectory(name, "g", "task", turns, {"correct": float(turns[-1].reward > 0)},
                      passed=turns[-1].reward > 0)


def test_token_versions_and_turn_credit():
    first_try = episode("a", [Turn([9, 4], [5, 6, 1], [-0.1, -0.2, -0.3], 4, 1.0)])
    # Its second turn's weights changed while it was sampled: each token's version is recorded.
    repaired = episode("b", [Turn([9, 4], [5, 1], [-0.4, -0.5], 3, 0.0),
                             Turn.sampled([7], [6, 6, 1], [-0.6, -0.7, -0.8], [4, 5, 5], 1.0)])
    never = episode("c", [Turn([9, 4], [8, 1], [-0.9, -1.0], 4, 0.0),
                          Turn([7], [8, 1], [-1.1, -1.2], 4, 0.0)])
    np.testing.assert_array_equal(sampled_token_versions(repaired), [-1, -1, 3, 3, -1, 4, 5, 5])

    batch, info = build_batch([AssembledGroup("g", (first_try, repaired, never), 0)], seq_len=10,
                              gamma=GAMMA, normalize_by_std=True, pad_id=0)
    assert info.samples == 3 and info.mean_turns == 5 / 3
    # Targets are tokens[1:]: row b reads [9, 4, 5, 1, 7, 6, 6, 1] and is scored on its tail.
    np.testing.assert_array_equal(batch["token_versions"][1], [-1, 3, 3, -1, 4, 5, 5, -1, -1, -1])
    np.testing.assert_array_equal(batch["token_versions"][0], [-1, 4, 4, 4] + [-1] * 6)
    np.testing.assert_array_equal(batch["loss_mask"][1], batch["token_versions"][1] >= 0)
    np.testing.assert_array_equal(batch["rollout_logprobs"][1][:7],
                                  np.float32([0, -0.4, -0.5, 0, -0.6, -0.7, -0.8]))

    # Episode returns G_1: 1 (first try), gamma^2 = 0.25 (repaired), 0 (never passed).
    episode_returns = np.array([1.0, GAMMA ** 2, 0.0])
    baseline, scale = episode_returns.mean(), episode_returns.std()
    expected = {(0, 0): 1.0, (1, 0): GAMMA ** 2, (1, 1): GAMMA, (2, 0): 0.0, (2, 1): 0.0}
    columns = {(0, 0): [1, 2, 3], (1, 0): [1, 2], (1, 1): [4, 5, 6], (2, 0): [1, 2], (2, 1): [4, 5]}
    for (row, turn), returned in expected.items():
        np.testing.assert_allclose(batch["advantages"][row, columns[row, turn]],
                                   (returned - baseline) / scale, rtol=1e-6, err_msg=f"{row} turn {turn}")
    # The repair earns less than a first-try pass and more than the attempt it repaired.
    assert batch["advantages"][0, 1] > batch["advantages"][1, 4] > batch["advantages"][1, 1]
    assert not batch["advantages"][batch["loss_mask"] == 0].any()
