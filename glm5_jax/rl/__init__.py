"""Asynchronous agentic RL: rollout workers, a version-aware trajectory buffer, an off-policy
learner, multi-turn code environments with a hierarchical reward.

Run it with ``python -m glm5_jax.rl --config=experiments/rl/<name>.py --workdir=DIR``; see
``glm5_jax/rl/README.md`` for the map of the package.
"""
