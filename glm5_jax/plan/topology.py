"""Named TPU topologies as deviceless devices, and what each chip offers.

Cloud TPU names count differently by generation: ``v4-N`` and ``v5p-N`` count TensorCores
(two per chip, so ``v5p-1024`` is 512 chips), ``v5litepod-N`` / ``v5e-N`` and ``v6e-N``
count chips. ``v5p:8x8x8`` (the compiler's own form) names the chip grid directly.
``get_topology_desc`` gives devices of the real TPU compiler (libtpu) with no chip here,
so a step can be compiled and its memory read as a pod would see it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from glm5_jax.errors import UserError

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip figures. ``hbm_bytes`` is what the TPU compiler reports as available (its
    out-of-memory message); the rates are Cloud TPU's published peak numbers."""

    generation: str
    hbm_bytes: int
    peak_bf16_flops: float
    hbm_bytes_per_s: float
    ici_bytes_per_s: float  # all of a chip's ICI links together, one direction
    cores_in_name: int  # TensorCores per chip counted by the Cloud TPU name ("v5p-N")
    grid_dims: int  # 3: a 3D torus (v4, v5p); 2: a 2D grid (v5e, v6e)
    chip_config: str  # get_topology_desc's chip_config_name (one device per chip)


CHIPS = {
    "v4": Chip("v4", int(30.75 * GIB), 275e12, 1.2e12, 300e9, 2, 3, "megacore"),
    "v5e": Chip("v5e", int(15.75 * GIB), 197e12, 819e9, 200e9, 1, 2, "default"),
    "v5p": Chip("v5p", int(95.74 * GIB), 459e12, 2.765e12, 600e9, 2, 3, "default"),
    "v6e": Chip("v6e", int(31.25 * GIB), 918e12, 1.64e12, 448e9, 1, 2, "default"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as the user wrote it
    chip: Chip
    grid: tuple[int, ...]  # chips along each axis
    num_slices: int = 1

    @property
    def num_chips(self) -> int:
        return math.prod(self.grid) * self.num_slices

    @property
    def compiler_name(self) -> str:
        return f"{self.chip.generation}:{'x'.join(map(str, self.grid))}"

    def devices(self) -> list:
        """Deviceless TPU devices (one per chip) from libtpu's compiler."""
        # libtpu locks /tmp/libtpu_lockfile so that one process owns the chips; compiling
        # for deviceless chips owns nothing, so planners and tests may run side by side.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        from jax.experimental import topologies  # needs libtpu (the [tpu] extra)

        bounds = (min(2, self.grid[0]), min(2, self.grid[1]), 1)  # chips per host: 2x2x1
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=self.compiler_name,
            chip_config_name=self.chip.chip_config, chips_per_host_bounds=bounds,
            num_slices=self.num_slices)
        return list(desc.devices)


class TopologyError(UserError):
    """A topology name that cannot be parsed or has no standard slice shape."""


def parse_topology(name: str) -> Topology:
    """``v5p-1024`` / ``v6e-256`` / ``v5litepod-16`` / ``v5p:8x8x8`` [``,slices=2``]."""
    text, slices = name.strip(), 1
    if "," in text:
        text, _, extra = text.partition(",")
        match = re.fullmatch(r"slices=(\d+)", extra.strip())
        if not match:
            raise TopologyError(f"topology {name!r}: after ',' expected slices=N")
        slices = int(match.group(1))
    grid_form = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", text)
    count_form = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
    if grid_form:
        chip = _chip(grid_form.group(1), name)
        grid = tuple(int(d) for d in grid_form.group(2).split("x"))
        if len(grid) != chip.grid_dims:
            raise TopologyError(f"topology {name!r}: {chip.generation} grids have "
                                f"{chip.grid_dims} dimensions")
        return Topology(name, chip, grid, slices)
    if count_form:
        chip = _chip(count_form.group(1), name)
        count = int(count_form.group(2))
        if count % chip.cores_in_name:
            raise TopologyError(f"topology {name!r}: {count_form.group(1)}-N counts TensorCores "
                                f"({chip.cores_in_name} per chip), so N must be even")
        return Topology(name, chip, standard_grid(chip, count // chip.cores_in_name, name), slices)
    raise TopologyError(f"topology {name!r} is not understood; examples: v5p-1024, v6e-256, "
                        "v5litepod-16, v4-32, v5p:8x8x8, v5p-256,slices=2")


def standard_grid(chip: Chip, chips: int, name: str = "") -> tuple[int, ...]:
    """The slice shape Cloud TPU uses for ``chips`` chips: the most cubic (3D) or square
    (2D) grid of powers of two, the longer sides last."""
    if chips < 1 or chips & (chips - 1):
        raise TopologyError(f"topology {name!r}: {chips} chips is not a power of two")
    if chip.grid_dims == 3 and chips < 8:  # one host: 1x1x1, 2x1x1, 2x2x1
        return {1: (1, 1, 1), 2: (2, 1, 1), 4: (2, 2, 1)}[chips]
    if chip.grid_dims == 2 and chips < 4:
        return (1, chips)
    exponent = int(math.log2(chips))
    base, extra = divmod(exponent, chip.grid_dims)
    sides = [2 ** base] * chip.grid_dims
    for i in range(extra):
        sides[-1 - i] *= 2
    return tuple(sides)


def _chip(generation: str, name: str) -> Chip:
    generation = ALIASES.get(generation, generation)
    if generation not in CHIPS:
        raise TopologyError(f"topology {name!r}: unknown TPU generation {generation!r}; "
                            f"known: {sorted(CHIPS)} (and {sorted(ALIASES)})")
    return CHIPS[generation]
