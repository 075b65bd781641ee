"""Mesh strings: the order the axes are named is the order devices are laid out in, and
``dcn:...;ici:...`` builds a hybrid mesh whose dcn axes alone cross granules."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from glm5_jax.sharding import MESH_AXES, MeshSpecError, make_mesh


def _ids(mesh, *axes):
    """Device ids laid out over ``axes`` (the others have size 1)."""
    grid = mesh.devices.transpose([MESH_AXES.index(a) for a in axes]
                                  + [MESH_AXES.index(a) for a in MESH_AXES if a not in axes])
    return np.vectorize(lambda d: d.id)(grid.reshape([mesh.shape[a] for a in axes]))


def test_the_first_named_axis_is_outermost():
    devices = jax.devices()[:8]
    fsdp_first = make_mesh("fsdp=4,tensor=2", devices)
    np.testing.assert_array_equal(_ids(fsdp_first, "fsdp", "tensor"), np.arange(8).reshape(4, 2))
    tensor_first = make_mesh("tensor=2,fsdp=4", devices)
    np.testing.assert_array_equal(_ids(tensor_first, "fsdp", "tensor"), np.arange(8).reshape(2, 4).T)
    assert dict(tensor_first.shape) == dict(fsdp_first.shape)


def test_hybrid_mesh_on_one_granule_is_the_ici_mesh():
    mesh = make_mesh("dcn:data=1;ici:fsdp=4,expert=2", jax.devices()[:8])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "expert": 2, "context": 1, "tensor": 1}
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


@pytest.mark.parametrize("spec,fragment", [
    ("dcn:data=2;ici:fsdp=4", "2 devices in total but 1"),  # one process: one granule
    ("dcn:data=1;pci:fsdp=8", "sections must be"),
    ("fsdp=3", "3 devices in total but 8"),
    ("pipeline=8", "unknown"),
])
def test_bad_mesh_strings_say_what_is_wrong(spec, fragment):
    with pytest.raises(MeshSpecError, match=fragment):
        make_mesh(spec, jax.devices()[:8])
