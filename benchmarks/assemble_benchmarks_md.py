"""Rebuild BENCHMARKS.md from the per-area fragments in benchmarks/results/.

    python benchmarks/assemble_benchmarks_md.py

Each benchmark writes (or its author pastes) one fragment, `benchmarks/results/<area>.md`,
with the command that produced its numbers. This script only concatenates them under one
header, with an anchor per section and headings shifted so every fragment's first heading is
a level-2 heading. Edit the fragments, never BENCHMARKS.md.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

SECTIONS = (  # (anchor, link text, fragments: generated tables first, then hand-written notes)
    ("model", "model", ("model.md",)),
    ("kernels", "kernels", ("kernels.md",)),
    ("data", "data", ("data.md",)),
    ("training", "training", ("train.md", "step_regression_notes.md", "step_regression.md")),
    ("decode", "decode", ("decode.md",)),
    ("continuous-batching", "continuous batching",
     ("decode_continuous.md", "decode_continuous_notes.md")),
    ("evaluation-sandbox", "evaluation sandbox", ("eval.md",)),
    ("pod-plan", "pod plan", ("plan_notes.md", "plan_tiny.md", "plan_full.md")),
    ("multi-process", "multi-process", ("multiprocess.md",)),
    ("weight-sync", "weight sync", ("weight_sync.md", "weight_sync_notes.md")),
    ("sweeps", "sweeps", ("sweep_tiny.md",)),
    ("agentic-rl", "agentic RL", ("rl.md", "rl_decoupled.md", "rl_staleness1.md", "rl_debug.md",
                                  "rl_notes.md", "rl_pretrained.md", "rl_orders_in_flight.md")),
    # The paper's tables (python -m glm5_jax.reproduce NAME --scale=cpu --fragment=...).
    ("repro-cost", "paper: cost", ("repro_cost.md", "repro_cost_notes.md", "repro_cost_pod.md",
                                   "repro_cost_pod_notes.md")),
    ("repro-long-context", "paper: long context", ("repro_long_context.md", "repro_long_context_notes.md",
                                                   "repro_long_context_pod.md", "repro_long_context_pod_notes.md")),
    ("repro-code-benchmarks", "paper: code benchmarks",
     ("repro_code_benchmarks.md", "repro_code_benchmarks_notes.md")),
    ("repro-async-rl", "paper: async RL", ("repro_async_rl.md", "repro_async_rl_notes.md")),
    ("repro-mtp-acceptance", "paper: MTP acceptance",
     ("repro_mtp_acceptance.md", "repro_mtp_acceptance_notes.md")),
)

HEADER = """# Benchmarks

Every number here was produced by a script in `benchmarks/` (or a module named in its
section) with the command shown in the section; this file is assembled from
`benchmarks/results/*.md` by `benchmarks/assemble_benchmarks_md.py`. Machine for all of them:
the shared 2-core development box, CPU only, no accelerator (this task was not lent a GPU);
it was often loaded by parallel jobs, so read ratios measured side by side in one run, not
absolute times. **GPU/TPU timings are pending** for every kernel: the kernels were checked
for correctness in interpret mode, for lowering to Triton (GPU), and compiled to TPU
executables by libtpu (deviceless, at GLM-5's dims); none was timed on an accelerator.
"""


def _shift_headings(text: str, top_level: int = 2) -> str:
    """Shift markdown headings (not `#` lines inside ``` fences) so the first is top_level."""
    lines, in_fence, shift = text.splitlines(), False, None
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else re.match(r"^(#+) ", line)
        if match:
            level = len(match.group(1))
            shift = top_level - level if shift is None else shift
            lines[i] = "#" * max(1, level + shift) + line[level:]
    return "\n".join(lines)


def assemble() -> str:
    present = [(anchor, name, [RESULTS / f for f in files if (RESULTS / f).exists()])
               for anchor, name, files in SECTIONS]
    present = [(anchor, name, paths) for anchor, name, paths in present if paths]
    parts = [HEADER, "Sections: " + ", ".join(f"[{name}](#{anchor})" for anchor, name, _ in present) + ".\n"]
    for anchor, _, paths in present:
        # The first fragment's first heading is the section's (level 2); later fragments of
        # the section start one level below it.
        body = [_shift_headings(p.read_text(), 2 if i == 0 else 3).rstrip() for i, p in enumerate(paths)]
        parts.append(f'<a id="{anchor}"></a>\n\n' + "\n\n".join(body) + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    (ROOT / "BENCHMARKS.md").write_text(assemble())
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")
