"""A step-time estimate from what the compiler reports and what the chip can do.

compute = HLO matmul FLOPs (every loop iteration counted, ``plan/hlo_flops``) / peak;
memory = HLO bytes accessed (the compiler's, scaled by the loops' trip counts,
``hlo_bytes``) / HBM bandwidth; collectives = bytes of collectives / ICI bandwidth. The estimate is max(compute, memory) + collectives:
collectives are assumed *not* to overlap with compute (pessimistic; XLA's async
collectives hide part of them), HBM traffic is assumed to overlap with compute. MFU is the
model's FLOPs (``train.flops``: 3 x forward matmul and attention FLOPs, what MFU
conventionally counts) over the estimated step time at the chip's peak, so rematerialised
recomputation lowers it, as it should.
"""

from __future__ import annotations

import dataclasses

from glm5_jax.plan.topology import Chip


@dataclasses.dataclass(frozen=True)
class Roofline:
    compute_s: float
    memory_s: float
    collectives_s: float
    step_s: float
    mfu: float
    bound: str  # "compute" | "memory" | "collectives"


def roofline(chip: Chip, hlo_flops: float, hlo_bytes: float, collective_bytes: float,
             model_flops: float) -> Roofline:
    """All quantities per device per step."""
    compute_s = hlo_flops / chip.peak_bf16_flops
    memory_s = hlo_bytes / chip.hbm_bytes_per_s
    collectives_s = collective_bytes / chip.ici_bytes_per_s
    step_s = max(compute_s, memory_s) + collectives_s
    parts = {"compute": compute_s, "memory": memory_s, "collectives": collectives_s}
    mfu = model_flops / (step_s * chip.peak_bf16_flops) if step_s > 0 else 0.0
    return Roofline(compute_s, memory_s, collectives_s, step_s, mfu, max(parts, key=parts.get))
