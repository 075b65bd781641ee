"""Plan a training run for a TPU pod from a CPU host: compile the real train step for a
named topology with libtpu (no chips needed) and read memory, FLOPs and collectives.

``python -m glm5_jax.plan --config=experiments/glm5_full.py --topology=v5p-1024``.
"""
