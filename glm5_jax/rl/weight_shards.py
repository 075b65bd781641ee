"""Weights as shards: what a sharded tree is made of, and how to rebuild it under another sharding.

A learner's parameter is split by its mesh into *distinct* pieces (a replicated parameter has
one; an fsdp=4 one has four), each held by one or more devices. The ``layout`` lists, per
leaf, its path, shape, dtype and the bounds of every distinct piece; it is the same in every
learner process. Each process ships only the pieces whose ``replica_id`` is 0 among its own
devices, so across processes every piece travels exactly once. A receiver rebuilds each leaf
from its pieces under its own sharding (``assemble_leaf``), piece by piece: a target shard that
is exactly one received piece is that piece, anything else is cut from the overlapping pieces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

Bounds = tuple[tuple[int, int], ...]  # (start, stop) per dimension
Path = tuple[str, ...]  # dict keys from the root


@dataclasses.dataclass(frozen=True)
class LeafLayout:
    path: Path
    shape: tuple[int, ...]
    dtype: str
    pieces: tuple[Bounds, ...]  # distinct pieces, sorted

    @property
    def itemsize(self) -> int:
        return np.dtype(jax.numpy.dtype(self.dtype)).itemsize

    def to_json(self) -> dict[str, Any]:
        return {"path": list(self.path), "shape": list(self.shape), "dtype": self.dtype,
                "pieces": [[list(b) for b in piece] for piece in self.pieces]}

    @staticmethod
    def from_json(data: dict[str, Any]) -> LeafLayout:
        return LeafLayout(tuple(data["path"]), tuple(data["shape"]), data["dtype"],
                          tuple(tuple(tuple(b) for b in piece) for piece in data["pieces"]))


def layout_id(layout: list[LeafLayout]) -> str:
    text = json.dumps([leaf.to_json() for leaf in layout], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def bounds_of(index: tuple[slice, ...], shape: tuple[int, ...]) -> Bounds:
    return tuple(slice_.indices(size)[:2] for slice_, size in zip(index, shape))


def flatten_dict_tree(tree: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(path, leaf) of a tree of plain dicts (flax variables), sorted by key."""
    if isinstance(tree, dict) or (hasattr(tree, "items") and not hasattr(tree, "shape")):
        for key in sorted(tree):
            yield from flatten_dict_tree(tree[key], prefix + (str(key),))
    else:
        yield prefix, tree


def unflatten_dict_tree(items: list[tuple[Path, Any]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path, value in items:
        node = root
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return root


def tree_layout(variables: Any) -> list[LeafLayout]:
    """The distinct pieces of every leaf of a tree of (possibly multi-process) jax.Arrays."""
    layout = []
    for path, leaf in flatten_dict_tree(variables):
        shape = tuple(leaf.shape)
        pieces = {bounds_of(index, shape) for index in leaf.sharding.devices_indices_map(shape).values()}
        layout.append(LeafLayout(path, shape, jax.numpy.dtype(leaf.dtype).name, tuple(sorted(pieces))))
    return layout


@dataclasses.dataclass(frozen=True)
class OwnedPiece:
    """One distinct piece this process ships: ``data`` is a single-device array."""

    leaf: int
    bounds: Bounds
    data: jax.Array
    nbytes: int


def owned_pieces(variables: Any) -> list[OwnedPiece]:
    """The pieces this process holds with replica id 0: each distinct piece of the whole job
    is in exactly one process's list."""
    owned = []
    for leaf_index, (_, leaf) in enumerate(flatten_dict_tree(variables)):
        shape = tuple(leaf.shape)
        for shard in leaf.addressable_shards:
            if shard.replica_id == 0:
                owned.append(OwnedPiece(leaf_index, bounds_of(shard.index, shape), shard.data,
                                        int(shard.data.nbytes)))
    return owned


def _overlap(a: Bounds, b: Bounds) -> Bounds | None:
    both = tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b))
    return None if any(start >= stop for start, stop in both) else both


def _relative(inner: Bounds, outer: Bounds) -> tuple[slice, ...]:
    return tuple(slice(i0 - o0, i1 - o0) for (i0, i1), (o0, _) in zip(inner, outer))


def cut(target: Bounds, pieces: dict[Bounds, np.ndarray], dtype) -> np.ndarray:
    """The region ``target`` of an array given as pieces that tile it."""
    if target in pieces:
        return pieces[target]
    out = np.empty(tuple(stop - start for start, stop in target), dtype)
    covered = 0
    for bounds, data in pieces.items():
        overlap = _overlap(target, bounds)
        if overlap is not None:
            out[_relative(overlap, target)] = data[_relative(overlap, bounds)]
            covered += int(np.prod([stop - start for start, stop in overlap]))
    if covered != out.size:
        raise ValueError(f"pieces cover {covered} of the {out.size} elements of {target}")
    return out


def assemble_leaf(leaf: LeafLayout, pieces: dict[Bounds, np.ndarray], sharding) -> jax.Array:
    """The leaf as one jax.Array under ``sharding``, from host pieces that tile it."""
    dtype = jax.numpy.dtype(leaf.dtype)
    return jax.make_array_from_callback(
        leaf.shape, sharding, lambda index: cut(bounds_of(index, leaf.shape), pieces, dtype))


ShardingFor = Callable[[Path, tuple[int, ...]], Any]


def sharding_by_path(mesh, logical_tree: Any) -> ShardingFor:
    """Per leaf path, the sharding the logical rules give it on ``mesh`` (fitted to its shape);
    replicated for paths the tree does not name."""
    from jax.sharding import NamedSharding, PartitionSpec

    from glm5_jax.sharding import fit_to_shape, logical_shardings

    by_path = dict(flatten_dict_tree(logical_shardings(mesh, logical_tree)))

    def sharding_for(path: Path, shape: tuple[int, ...]):
        sharding = by_path.get(path)
        if sharding is None:
            return NamedSharding(mesh, PartitionSpec())
        return fit_to_shape(sharding, shape)

    return sharding_for
