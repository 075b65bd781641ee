"""Ablation sweeps: a grid of config overrides, one workdir per point, a table and a plot.

    python -m glm5_jax.sweep --config=experiments/tiny.py --workdir=DIR \
        --axis=learning_rate=1e-3,3e-3 --axis=model_overrides.router_mode=static,dynamic
    python -m glm5_jax.sweep --job=rl --config=experiments/rl/tiny_sync.py --workdir=DIR \
        --axis=learning_rate=1e-4,3e-4 --axis=seed=0,1

``grid``: axes and sweep files -> points (override dicts) with names; ``jobs``: what a point
runs (``train``, or ``rl``: RL training then its fixed evaluation); ``runner``: runs or
submits each point, skips finished ones, records failures; ``results`` (with
``rl_results`` for RL points): results.jsonl, results.md and the plot.
"""
