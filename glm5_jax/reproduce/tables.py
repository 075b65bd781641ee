"""The paper's tables: name -> the module that builds it and the experiment file it reads."""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

from glm5_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class TableEntry:
    name: str
    module: str  # glm5_jax.reproduce.<module>: build(context) -> Table
    experiment: str  # experiments/paper/<file>.py: get_config(scale), get_table(scale)
    claim: str  # the paper's claim, one line

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


TABLES = {entry.name: entry for entry in (
    TableEntry("cost", "glm5_jax.reproduce.cost", "experiments/paper/cost.py",
               "avg. tokens-per-inference cost 0.62x of a dense baseline; compute cut ~40% without loss"),
    TableEntry("long_context", "glm5_jax.reproduce.long_context", "experiments/paper/long_context.py",
               ">95% of performance at 8K prompts; dense baselines degrade sharply beyond 4K"),
    TableEntry("code_benchmarks", "glm5_jax.reproduce.code_benchmarks", "experiments/paper/code_benchmarks.py",
               "HumanEval 78.3 / MBPP 84.1 pass@1"),
    TableEntry("async_rl", "glm5_jax.reproduce.async_rl", "experiments/paper/async_rl.py",
               "async RL converges 2.5x faster than synchronous PPO, with higher reward"),
    TableEntry("mtp_acceptance", "glm5_jax.reproduce.mtp_acceptance", "experiments/paper/mtp_acceptance.py",
               "MTP accept length 2.76 with 4 speculative steps (DeepSeek-V3.2: 2.55)"),
)}


def table_entry(name: str) -> TableEntry:
    if name not in TABLES:
        raise UserError(f"table {name!r} is unknown; allowed: {list(TABLES)} (see --list)")
    return TABLES[name]
