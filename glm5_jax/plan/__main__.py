"""``python -m glm5_jax.plan --config=experiments/glm5_full.py --topology=v5p-1024``.

Compiles the train step of an experiment for a TPU topology from this host (no TPU
needed: libtpu's compiler, the ``[tpu]`` extra) and prints per device: parameter and
optimizer bytes, arguments, temporaries, peak against the chip's HBM, FLOPs per step,
bytes of each collective kind, and a roofline estimate of step time and MFU. The last
stdout line is one JSON object. Exit 0 when every stage of the run fits, 3 when one does
not (with one sentence saying what is over and what to try), 2 on a usage error.

    --config.seq_len=4096 --config.batch_size=256 --config.mesh=fsdp=-1,expert=32
    --stages=sparse          compile only these stages (default: those the schedule reaches)
    --json                   print only the JSON line
    --search [--search_budget=8]   compile up to N (mesh, remat, grad_accum) candidates and
                             rank those that fit by roofline step time (the JSON line: the
                             best plan, plus "search": every fitting candidate)
"""

from __future__ import annotations

import json
import os
import sys

# The host only traces and compiles; the TPU is a deviceless target, not a backend to open.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags
from ml_collections import config_flags

from glm5_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (experiments/<name>.py); override fields with "
    "--config.<field>=<value>.", lock_config=True)
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU topology: v5p-1024 (TensorCores), v6e-256 / v5litepod-16 (chips), "
    "v4-32, v5p:8x8x8; ',slices=N' for several slices.")
_STAGES = flags.DEFINE_list("stages", None, "Stages to compile: dense, dense_warmup, sparse "
                            "(default: every stage the schedule reaches).")
_JSON = flags.DEFINE_bool("json", False, "Print only the JSON line.")
_SEARCH = flags.DEFINE_bool("search", False, "Try mesh shapes, remat policies and "
                            "micro-batching; rank the plans that fit.")
_SEARCH_BUDGET = flags.DEFINE_integer("search_budget", 8, "Most candidates --search compiles.")
flags.mark_flags_as_required(["config", "topology"])

EXIT_DOES_NOT_FIT = 3
EXIT_USAGE = 2


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _usage_error(f"unexpected arguments: {argv[1:]}")
    from glm5_jax.config import ConfigError
    from glm5_jax.plan.report import does_not_fit_sentence, render_table
    from glm5_jax.plan.topology import TopologyError, parse_topology
    from glm5_jax.train.experiment import STAGES, ExperimentConfigError

    stages = _STAGES.value
    if stages and set(stages) - set(STAGES):
        _usage_error(f"--stages={','.join(stages)}: allowed stages are {list(STAGES)}")
    try:
        topology = parse_topology(_TOPOLOGY.value)
        try:
            import libtpu  # noqa: F401
        except ImportError:
            _usage_error("the planner compiles with libtpu, which is not installed: "
                         "pip install -e '.[tpu]'")
        from glm5_jax.plan.planner import plan
        if _SEARCH.value:
            _run_search(_CONFIG.value, topology, stages)
            return
        result = plan(_CONFIG.value, topology, stages)
    except (TopologyError, ExperimentConfigError, ConfigError, ValueError) as error:
        _usage_error(str(error))
    if not _JSON.value:
        print(render_table(result))
        if not result.fits:
            print(does_not_fit_sentence(result))
    print(json.dumps(result.to_json()), flush=True)
    if not result.fits:
        sys.exit(EXIT_DOES_NOT_FIT)


def _run_search(config, topology, stages) -> None:
    from glm5_jax.plan.report import render_table
    from glm5_jax.plan.search import search

    quiet = _JSON.value
    ranked = search(config, topology, stages, _SEARCH_BUDGET.value,
                    report=(lambda line: None) if quiet else (lambda line: print(line, flush=True)))
    if not ranked:
        if not quiet:
            print(f"does not fit: none of the {_SEARCH_BUDGET.value} candidates tried fits on "
                  f"{topology.name}; raise --search_budget, shorten --config.seq_len or "
                  "--config.batch_size, or use more chips.")
        print(json.dumps({"fits": False, "search": [], "topology": topology.name}), flush=True)
        sys.exit(EXIT_DOES_NOT_FIT)
    best_candidate, best = ranked[0]
    if not quiet:
        print("\nplans that fit, fastest first:")
        for rank, (candidate, result) in enumerate(ranked, 1):
            step = max(s.roofline.step_s for s in result.stages if s.roofline)
            print(f"{rank}. {candidate.describe()}: roofline step {step * 1e3:,.1f} ms, peak "
                  f"{result.worst.peak_bytes / 2**30:,.2f} GiB")
        print(f"\nbest: {best_candidate.describe()}")
        print(render_table(best))
    summary = best.to_json()
    summary["search"] = [{"mesh": c.mesh, "remat_policy": c.remat_policy,
                          "grad_accum_steps": c.grad_accum_steps,
                          "peak_bytes_per_device": r.worst.peak_bytes} for c, r in ranked]
    print(json.dumps(summary), flush=True)


def _usage_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    cli.run(main)
