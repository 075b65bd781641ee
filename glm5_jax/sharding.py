"""Device mesh construction and the one table mapping logical axis names onto mesh axes.

Model code names axes logically (``"embed"``, ``"heads"``, ``"expert"``...). Changing how a run
is parallelised means changing the mesh string or this table, never the model.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from glm5_jax.errors import UserError

# ``context`` splits the sequence (context parallelism, for 128K+ stages); ``tensor`` is
# innermost, so it lands on the closest chips.
MESH_AXES = ("data", "fsdp", "expert", "context", "tensor")
BATCH_MESH_AXES = ("data", "fsdp", "expert")  # what a batch's rows shard over


class MeshSpecError(UserError):
    """A mesh string that does not parse or does not match the devices."""

# Logical axis -> mesh axis (or axes, or None for replicated). Parameters and activations use
# different names where they must shard differently (a parameter's embed dim is FSDP-sharded;
# an activation's batch dim already uses the fsdp axis).
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    # The expert axis doubles as a batch axis outside the MoE (DeepSeek, MaxText): each
    # device computes attention and dense layers for its own rows, never a copy of another's.
    ("activation_batch", ("data", "fsdp", "expert")),
    ("activation_length", "context"),
    ("activation_kv_length", None),  # keys/values: every query shard needs every key
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("activation_topk", None),
    ("activation_tokens", ("data", "fsdp", "expert")),
    # parameters
    ("layers", None),
    ("vocab", "tensor"),
    # Non-expert weights shard over fsdp x expert x context (those axes are data-parallel
    # for them, so they are FSDP axes too).
    ("embed", ("fsdp", "expert", "context")),
    ("embed_pair", None),  # the MTP projection's input: [embedding; hidden]
    ("heads", "tensor"),
    ("index_heads", None),
    ("head_dim", None),
    # A mesh axis serves one dim per tensor: these take fsdp x expert where embed does not
    # (q_b_proj, kv_b_proj, the indexer's wq_b).
    ("q_lora", ("fsdp", "expert", "context")),
    ("kv_lora", ("fsdp", "expert", "context")),
    ("norm", None),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("expert_mlp", "tensor"),
    # Expert weights are ~97% of GLM-5's parameters: FSDP-shard them too (the expert axis
    # alone leaves 8 of 256 experts, ~106 GiB, on every chip of a 512-chip pod).
    ("expert_embed", ("fsdp", "context")),
    ("router_expert", None),
)


def parse_mesh_spec(spec: str, num_devices: int | None = None) -> dict[str, int]:
    """Parse ``"data=1,fsdp=4,expert=2,context=1,tensor=1"``; unnamed axes get size 1, and one axis
    may be ``-1``: it takes the devices the others leave (``"fsdp=-1,expert=32"``).

    The product of the sizes must equal the number of devices; the error says which.
    """
    num_devices = jax.device_count() if num_devices is None else num_devices
    sizes = {axis: 1 for axis in MESH_AXES}
    fill = None
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            raise MeshSpecError(f"mesh entry {part!r} must look like axis=size, e.g. 'fsdp=4'")
        name, value = (x.strip() for x in part.split("=", 1))
        if name not in MESH_AXES:
            raise MeshSpecError(f"mesh axis {name!r} is unknown; allowed axes: {list(MESH_AXES)}")
        if value == "-1" and fill is None:
            fill = name
            continue
        if not value.isdigit() or int(value) < 1:
            raise MeshSpecError(f"mesh axis {name}={value!r} must be a positive integer "
                             "(or -1 for one axis: the remaining devices)")
        sizes[name] = int(value)
    if fill is not None:
        rest = int(np.prod(list(sizes.values())))
        if num_devices % rest:
            raise MeshSpecError(f"mesh {spec!r}: {num_devices} devices do not divide by the "
                             f"{rest} the fixed axes take, so {fill}=-1 has no size")
        sizes[fill] = num_devices // rest
    product = int(np.prod(list(sizes.values())))
    if product != num_devices:
        raise MeshSpecError(
            f"mesh {spec!r} has {product} devices in total but {num_devices} are available; "
            "the product of the axis sizes must equal the device count"
        )
    return sizes


def make_mesh(spec: str = "", devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with the named axes (``MESH_AXES``); ``spec=""`` puts every device on ``data``.

    * ``"fsdp=4,expert=2"``: one slice. Devices are laid out in the order the spec names
      the axes, first name outermost (``"tensor=2,fsdp=4"`` puts the two tensor shards in
      different halves of the device list: with two processes, on different processes).
    * ``"dcn:data=2;ici:fsdp=64,expert=4"``: several slices (or, on CPU/GPU, processes)
      joined over the data-center network: each axis is its ``dcn`` size times its ``ici``
      size, built with ``mesh_utils.create_hybrid_device_mesh`` so only the ``dcn`` axes
      cross slices.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not spec:
        spec = f"data={len(devices)}"
    if "dcn:" in spec or "ici:" in spec:
        return _hybrid_mesh(spec, devices)
    sizes = parse_mesh_spec(spec, len(devices))
    order = [axis for axis in _named_axes(spec) if axis in sizes]
    order += [axis for axis in MESH_AXES if axis not in order]
    grid = np.asarray(devices).reshape([sizes[axis] for axis in order])
    grid = grid.transpose([order.index(axis) for axis in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def _named_axes(spec: str) -> list[str]:
    return [part.split("=", 1)[0].strip() for part in spec.split(",") if part.strip()]


def _hybrid_mesh(spec: str, devices: Sequence[jax.Device]) -> Mesh:
    from jax.experimental import mesh_utils

    parts = dict(part.split(":", 1) for part in filter(None, (p.strip() for p in spec.split(";"))))
    unknown = set(parts) - {"dcn", "ici"}
    if unknown or ":" not in spec:
        raise MeshSpecError(f"mesh {spec!r}: sections must be 'dcn:...' and 'ici:...' joined by ';'")
    granules = len({getattr(d, "slice_index", d.process_index) for d in devices})
    dcn = parse_mesh_spec(parts.get("dcn", ""), granules)
    ici = parse_mesh_spec(parts.get("ici", ""), len(devices) // granules)
    grid = mesh_utils.create_hybrid_device_mesh(
        [ici[a] for a in MESH_AXES], [dcn[a] for a in MESH_AXES], devices,
        process_is_granule=not hasattr(devices[0], "slice_index"))
    return Mesh(grid, MESH_AXES)


@contextlib.contextmanager
def activate(mesh: Mesh) -> Iterator[Mesh]:
    """Enter the mesh and the logical rules together (activation constraints need both).

    The mesh is set with ``jax.set_mesh`` so model code can read it at trace time
    (``jax.sharding.get_abstract_mesh()``) and wrap Pallas kernels in ``shard_map``.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        yield mesh


def logical_shardings(mesh: Mesh, logical_tree, shapes=None) -> object:
    """NamedShardings for a pytree of logical PartitionSpecs (from ``nn.get_partition_spec``).

    With ``shapes`` (a matching tree of arrays or ShapeDtypeStructs), a dim whose mesh axes do
    not divide it keeps only the leading axes that do (kv_lora=512 over fsdp x expert x
    context = 1024 devices shards 512 ways over the first two), instead of failing later.
    """
    shardings = nn.logical_to_mesh_sharding(logical_tree, mesh, LOGICAL_AXIS_RULES)
    if shapes is None:
        return shardings
    return jax.tree.map(lambda sharding, leaf: fit_to_shape(sharding, leaf.shape), shardings,
                        shapes, is_leaf=lambda x: isinstance(x, NamedSharding))


def fit_to_shape(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
    """Drop trailing mesh axes of each dim until their product divides the dim's size."""
    sizes = dict(sharding.mesh.shape)
    fitted = []
    for dim, axes in enumerate(tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))):
        axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        while axes and shape[dim] % int(np.prod([sizes[a] for a in axes])):
            axes = axes[:-1]
        fitted.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return NamedSharding(sharding.mesh, PartitionSpec(*fitted))


def batch_shards(mesh: Mesh) -> int:
    """How many ways a batch's rows split: data x fsdp x expert."""
    return int(np.prod([dict(mesh.shape)[axis] for axis in BATCH_MESH_AXES]))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Inputs [batch, seq, ...] shard rows over data, fsdp and expert (as activation_batch)
    and the sequence over context (as activation_length)."""
    rest = ("context",) + (None,) * (ndim - 2) if ndim > 1 else ()
    return NamedSharding(mesh, PartitionSpec(BATCH_MESH_AXES, *rest))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
