"""Ablation sweeps: a grid of config overrides, one workdir per point, a table and a plot.

    python -m glm5_jax.sweep --config=experiments/tiny.py --workdir=DIR \
        --axis=learning_rate=1e-3,3e-3 --axis=model_overrides.router_mode=static,dynamic

``grid``: axes and sweep files -> points (override dicts) with names; ``runner``: runs or
submits each point, skips finished ones, records failures; ``results``: results.jsonl,
results.md and the plot.
"""
