"""FLOPs of one HLO ``convolution``, counted as XLA's own cost analysis counts them.

The TPU compiler writes every matmul as a ``convolution``: ``dim_labels=0bf_io0->0bf`` names
which operand dimension is the batch (``b``), the features (``f``; ``i``/``o`` in the
kernel) and each spatial dimension (a digit, the window dimension it belongs to). A batched
matmul's batch becomes a spatial dimension with a window of 1, or a "diagonal" window
(``size=N stride=N-1 lhs_dilate=N``) where each output position meets exactly one input.

FLOPs = 2 x (input features / feature_group_count) x output features
          x (batch / batch_group_count) x prod over spatial dimensions of the number of
          (output position, kernel position) pairs that land on a real input element,
which is ``HloCostAnalysis::GetConvolutionFlops`` (xla/service/hlo_cost_analysis.cc),
including its two closed forms; the general case is the same count, vectorised per kernel
position.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

_DIM_LABELS = re.compile(r"\bdim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)")
_WINDOW = re.compile(r"\bwindow=\{([^}]*)\}")
_FEATURE_GROUPS = re.compile(r"\bfeature_group_count=(\d+)")
_BATCH_GROUPS = re.compile(r"\bbatch_group_count=(\d+)")


@dataclasses.dataclass(frozen=True)
class WindowDim:
    size: int
    stride: int = 1
    pad_low: int = 0
    pad_high: int = 0
    base_dilation: int = 1  # lhs_dilate
    window_dilation: int = 1  # rhs_dilate


def parse_window(text: str) -> list[WindowDim]:
    """``size=2x4 stride=3x1 pad=0_0x3_3 lhs_dilate=2x1 rhs_reversal=0x1`` -> one per dim."""
    fields = dict(item.split("=", 1) for item in text.split())
    sizes = [int(s) for s in fields["size"].split("x")]

    def each(key: str, default: int) -> list[int]:
        return [int(v) for v in fields[key].split("x")] if key in fields else [default] * len(sizes)

    pads = ([tuple(int(p) for p in pair.split("_")) for pair in fields["pad"].split("x")]
            if "pad" in fields else [(0, 0)] * len(sizes))
    return [WindowDim(size, stride, low, high, base, dilation) for size, stride, (low, high),
            base, dilation in zip(sizes, each("stride", 1), pads, each("lhs_dilate", 1),
                                  each("rhs_dilate", 1))]


def valid_positions(window: WindowDim, input_size: int, kernel_size: int,
                    output_size: int) -> int:
    """(output, kernel) position pairs of one spatial dimension that read a real input."""
    if (input_size == output_size == kernel_size == window.base_dilation
            and window.window_dilation == 1 and max(1, input_size - 1) == window.stride
            and window.pad_low == window.pad_high == 0):
        return input_size  # a batched matmul's diagonal window
    if (input_size == 1 and kernel_size == output_size and window.window_dilation == 1
            and window.base_dilation == 1 and window.stride == 1
            and window.pad_low == window.pad_high == output_size - 1):
        return output_size
    kernel = np.arange(kernel_size, dtype=np.int64)
    if window.stride == 1 and window.base_dilation == 1:
        base = window.pad_low - kernel * window.window_dilation
        return int(np.maximum(np.minimum(input_size + base, output_size)
                              - np.maximum(base, 0), 0).sum())
    output = np.arange(output_size, dtype=np.int64)
    count = 0
    for k in kernel:
        undilated = output * window.stride - window.pad_low + k * window.window_dilation
        index = undilated // window.base_dilation
        count += int(((undilated % window.base_dilation == 0)
                      & (index >= 0) & (index < input_size)).sum())
    return count


def convolution_flops(output: list[int], lhs: list[int] | None, rhs: list[int] | None,
                      attributes: str) -> float:
    """FLOPs of ``convolution`` with these result/operand dims and its attribute text."""
    labels = _DIM_LABELS.search(attributes)
    if lhs is None or rhs is None or labels is None:
        return 0.0
    lhs_labels, rhs_labels, out_labels = labels.groups()
    window_text = _WINDOW.search(attributes)
    windows = parse_window(window_text.group(1)) if window_text else []
    spatial = math.prod(
        valid_positions(window, lhs[lhs_labels.index(str(d))], rhs[rhs_labels.index(str(d))],
                        output[out_labels.index(str(d))])
        for d, window in enumerate(windows))
    feature_groups = _FEATURE_GROUPS.search(attributes)
    batch_groups = _BATCH_GROUPS.search(attributes)
    input_features = lhs[lhs_labels.index("f")] // (int(feature_groups.group(1))
                                                    if feature_groups else 1)
    batch = lhs[lhs_labels.index("b")] // (int(batch_groups.group(1)) if batch_groups else 1)
    return 2.0 * input_features * output[out_labels.index("f")] * batch * spatial
