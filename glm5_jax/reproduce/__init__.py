"""The paper's tables at small scale: one command per table (``python -m glm5_jax.reproduce``).

Each table (``tables.TABLES``) is a module with ``build(context) -> Table``: it trains its rows
as sweep points (``points.py``, one workdir each), measures them (``measure.py``,
``plan/hlo_flops.py``), compares them with the paper's claims, and writes DIR/table.json,
DIR/table.md and its plots (``table_files.py``). The configs live in ``experiments/paper/``,
at three scales (``scales.py``): smoke (CI), cpu (BENCHMARKS.md) and pod (``pod.py``: configs
and launch/plan commands for a TPU pod).
"""
