"""FLOPs and bytes of TPU-compiled programs, loop trip counts applied (what the planner's
roofline uses). libtpu compiles for deviceless chips, so no TPU is needed; every program
here is small and compiles in about a second. On TPU every matmul is a ``convolution``
(``plan/hlo_convolution``), and XLA's cost analysis counts a loop body once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from glm5_jax.plan.hlo_bytes import bytes_accessed, loop_factor
from glm5_jax.plan.topology import parse_topology
from glm5_jax.plan.hlo_convolution import WindowDim, parse_window, valid_positions
from glm5_jax.plan.hlo_flops import matmul_flops

WIDTH, ROWS = 512, 256


def scanned_grad(layers: int, mesh: Mesh):
    """grad of a scanned stack of [WIDTH, WIDTH] matmuls, weights sharded over 8 chips."""
    def loss(weights, x):
        def body(carry, w):
            y = jax.lax.with_sharding_constraint(carry @ w, NamedSharding(mesh, PartitionSpec("x")))
            return y, None
        return jax.lax.scan(body, x, weights)[0].sum()

    step = jax.jit(jax.grad(loss), in_shardings=(
        NamedSharding(mesh, PartitionSpec(None, None, "x")), NamedSharding(mesh, PartitionSpec("x"))))
    return step.lower(jax.ShapeDtypeStruct((layers, WIDTH, WIDTH), jnp.bfloat16),
                      jax.ShapeDtypeStruct((ROWS, WIDTH), jnp.bfloat16)).compile()


def v5p16_mesh() -> Mesh:
    """Eight deviceless v5p chips in a row (test_plan's collective counts use it too)."""
    return Mesh(np.asarray(parse_topology("v5p-16").devices()).reshape(8), ("x",))


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return v5p16_mesh()


def test_tpu_matmul_flops_count_every_scan_iteration(mesh):
    """Per device: 32 rows x [512, 512], forward plus two backward matmuls, per layer."""
    layers = 6
    compiled = scanned_grad(layers, mesh)
    counted = matmul_flops(compiled.as_text())
    expected = layers * 3 * 2 * (ROWS // 8) * WIDTH * WIDTH
    assert counted.unknown_trip_counts == 0
    assert counted.flops == expected
    # The compiler's own analysis counts the loop body once: the reason for the count.
    assert compiled.cost_analysis()["flops"] < 2 * expected / layers


def test_tpu_batched_matmuls_in_a_loop_count_exactly(mesh):
    """Attention-shaped einsums (batch dims become convolution spatial dims on TPU) in a
    fori_loop, and their gradients: 3 x 2 x b*s*t*d per einsum per iteration."""
    b, s, t, d, steps = 4, 128, 256, 64, 5
    one = NamedSharding(Mesh(np.asarray(mesh.devices).reshape(-1)[:1], ("y",)), PartitionSpec())

    def loss(q, k):
        def body(_, carry):
            scores = jnp.einsum("bsd,btd->bst", carry, k)
            return carry + jnp.einsum("bst,btd->bsd", jnp.tanh(scores), k)
        return jax.lax.fori_loop(0, steps, body, q).sum()

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1)), in_shardings=(one, one)).lower(
        jax.ShapeDtypeStruct((b, s, d), jnp.float32),
        jax.ShapeDtypeStruct((b, t, d), jnp.float32)).compile()
    counted = matmul_flops(compiled.as_text())
    assert counted.unknown_trip_counts == 0
    assert counted.flops == steps * 2 * 3 * 2 * b * s * t * d


def test_convolution_windows_count_valid_positions_like_xla():
    """The closed forms and the general count agree with a brute-force count."""
    def brute(window: WindowDim, inputs: int, kernel: int, outputs: int) -> int:
        count = 0
        for k in range(kernel):
            for o in range(outputs):
                at = o * window.stride - window.pad_low + k * window.window_dilation
                if at % window.base_dilation == 0 and 0 <= at // window.base_dilation < inputs:
                    count += 1
        return count

    diagonal = parse_window("size=136 stride=135 lhs_dilate=136")[0]
    assert valid_positions(diagonal, 136, 136, 136) == 136 == brute(diagonal, 136, 136, 136)
    padded = parse_window("size=1x8 pad=0_0x7_7 rhs_reversal=0x1")[1]
    assert padded == WindowDim(8, 1, 7, 7)
    assert valid_positions(padded, 20, 8, 27) == brute(padded, 20, 8, 27)
    strided = parse_window("size=4x1 stride=3x1 lhs_dilate=4x1")[0]
    assert valid_positions(strided, 10, 4, 13) == brute(strided, 10, 4, 13)


def test_bytes_of_a_scan_grow_linearly_with_its_layers(mesh):
    """Each iteration reads its layer's slice of the stacked weights, not the whole stack:
    the bytes per step grow linearly with the layers (a whole-stack read per iteration
    would grow quadratically), by at least the gathered [512, 512] weight each layer reads
    forward and backward; counting the body once misses most of it."""
    texts = {layers: scanned_grad(layers, mesh).as_text() for layers in (6, 12, 24)}
    per_step = {layers: bytes_accessed(text).bytes for layers, text in texts.items()}
    once = {layers: bytes_accessed(text, count_trips=False).bytes for layers, text in texts.items()}
    assert bytes_accessed(texts[6]).unknown_trip_counts == 0
    growth = per_step[12] - per_step[6], per_step[24] - per_step[12]
    assert growth[1] == pytest.approx(2 * growth[0], rel=0.05)
    assert per_step[24] - per_step[6] > 18 * 2 * WIDTH * WIDTH * 2
    assert once[24] < per_step[24] / 4
    assert loop_factor(texts[24]) > loop_factor(texts[6]) > 2
