"""Matmul FLOPs of a compiled program, read from its optimized HLO with loop trip counts applied.

XLA's own ``compiled.cost_analysis()["flops"]`` counts a ``while`` body once, whatever its
trip count, so for a model whose layers are a scan (and whose attention, cross entropy and
indexer loss run in chunked loops) it reports a fraction of the work. Here every ``dot`` in
the compiled module counts 2 x (output elements) x (contracted elements), and a computation
called from a ``while`` counts ``known_trip_count`` times (the bound XLA itself recorded in the
loop's backend config; else the single integer constant of its condition, ``i < N``). A loop
whose bound cannot be read is counted once and reported in ``unknown_trip_counts``.

Only dots and convolutions are counted (the TPU compiler writes every matmul as a
``convolution``; ``hlo_convolution`` counts it as XLA does): elementwise work, which
XLA counts as one FLOP per element, is a few percent of a transformer's and is left out, as
model-FLOPs conventions do. What is counted is what this backend's program does: on CPU the
MoE runs as padded blocks (``model/blocked_experts.py``) or, with ``ragged_dot``, as every
row times every expert, and those are the FLOPs reported.
"""

from __future__ import annotations

import dataclasses
import math
import re

from glm5_jax.plan.hlo_collectives import (
    BRANCHES,
    LOOP_BODY,
    OPERAND,
    PREDICATED,
    loop_trip_count,
    split_computations,
)
from glm5_jax.plan.hlo_convolution import convolution_flops

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?)(?:\{[^}]*\})? ([a-z][a-z0-9\-]*)\((.*)$")
_TUPLE_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = \(")
_SHAPE = re.compile(r"^[a-z0-9]+\[([0-9,]*)\]")
_CALLEE = re.compile(r"\b(?:body|calls|to_apply)=%([\w.\-]+)")
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([0-9,]*)\}")
_OP_NAME = re.compile(r'op_name="([^"]*)"')

# Where a dot's FLOPs go, read from its op_name (the JAX name stack: jit/jvp/transpose, then
# the Flax module path): the first pattern that matches names the part.
PARTS = (
    ("optimizer", re.compile(r"/optimizer/")),
    ("indexer distillation loss", re.compile(r"indexer_loss")),
    ("indexer", re.compile(r"indexer")),
    ("routed experts", re.compile(r"mlp/experts|/experts/")),
    ("shared expert", re.compile(r"shared_experts")),
    ("router", re.compile(r"mlp/gate/|/router/")),
    ("attention projections", re.compile(r"(self_attn|MLAttention).*_proj/")),
    ("attention scores and values", re.compile(r"self_attn|MLAttention|attention")),
    ("dense MLP", re.compile(r"/mlp/")),
    ("MTP", re.compile(r"mtp", re.IGNORECASE)),
    ("embedding and head", re.compile(r"lm_head|embed")),
)


def part_of(op_name: str) -> str:
    """'<part>, <pass>': the model part (PARTS; 'other' when none matches) and the pass
    (recompute under remat's ``rematted_computation``, backward under ``transpose``, else
    forward)."""
    if not op_name:
        # A dot the compiler wrote itself, with no op_name to say whose it is. On TPU the
        # largest are ragged_dot's weight gradients: a base-dilated convolution per expert
        # group over every row of the group buffer, masked (BENCHMARKS.md, "Pod plan").
        return "compiler-generated (no op_name)"
    part = next((name for name, pattern in PARTS if pattern.search(op_name)), "other")
    if "rematted_computation" in op_name:
        stage = "recompute"
    elif "transpose(" in op_name:
        stage = "backward"
    else:
        stage = "forward"
    return f"{part}, {stage}"


@dataclasses.dataclass(frozen=True)
class MatmulFlops:
    flops: float  # per execution of the program
    dots: int  # dot instructions executed (trip counts applied)
    unknown_trip_counts: int  # loops counted once because their bound could not be read
    by_part: dict[str, float] = dataclasses.field(default_factory=dict)  # part_of -> FLOPs


def _dims(shape: str) -> list[int] | None:
    match = _SHAPE.match(shape)
    if not match:
        return None
    return [int(d) for d in match.group(1).split(",") if d]


def _dot_flops(output: list[int], lhs: list[int] | None, rest: str) -> float:
    contracting = _CONTRACTING.search(rest)
    if lhs is None or contracting is None:
        return 0.0
    contracted = math.prod(lhs[int(d)] for d in contracting.group(1).split(",") if d)
    return 2.0 * math.prod(output) * contracted


def matmul_flops(hlo_text: str) -> MatmulFlops:
    """FLOPs of every dot in ``hlo_text`` (``compiled.as_text()``), loops unrolled by count,
    in all and by model part (``part_of``)."""
    computations, entry = split_computations(hlo_text)
    own: dict[str, tuple[dict[str, float], int]] = {}
    # Per computation: (callees, times). One callee, or a conditional's branches (the costliest
    # counts: the work when the step runs); times None: a loop whose bound is unknown.
    calls: dict[str, list[tuple[tuple[str, ...], int | None]]] = {}
    unknown = 0
    for name, lines in computations.items():
        shapes: dict[str, list[int] | None] = {}
        parts: dict[str, float] = {}
        dots, calls[name] = 0, []
        for line in lines:
            match = _INSTRUCTION.match(line)
            if not match:
                if _TUPLE_INSTRUCTION.match(line):
                    _collect_calls(line, computations, calls[name])
                continue
            result, shape, opcode, rest = match.groups()
            shapes[result] = _dims(shape)
            if opcode in ("dot", "convolution"):
                operands = OPERAND.findall(rest.split(")", 1)[0])
                lhs = shapes.get(operands[0]) if operands else None
                if opcode == "dot":
                    flops = _dot_flops(shapes[result] or [], lhs, rest)
                else:
                    rhs = shapes.get(operands[1]) if len(operands) > 1 else None
                    flops = convolution_flops(shapes[result] or [], lhs, rhs, rest)
                op_name = _OP_NAME.search(rest)
                part = part_of(op_name.group(1) if op_name else "")
                parts[part] = parts.get(part, 0.0) + flops
                dots += 1
            _collect_calls(line, computations, calls[name])
        own[name] = (parts, dots)
    memo: dict[str, tuple[dict[str, float], int]] = {}

    def total(name: str) -> tuple[dict[str, float], int]:
        nonlocal unknown
        if name not in memo:
            memo[name] = ({}, 0)  # a cycle would count once
            own_parts, dots = own.get(name, ({}, 0))
            parts = dict(own_parts)
            for callees, times in calls.get(name, ()):
                if times is None:
                    unknown += 1
                    times = 1
                sub_parts, sub_dots = max((total(callee) for callee in callees),
                                          key=lambda counted: sum(counted[0].values()))
                for part, flops in sub_parts.items():
                    parts[part] = parts.get(part, 0.0) + times * flops
                dots += times * sub_dots
            memo[name] = (parts, dots)
        return memo[name]

    parts, dots = total(entry)
    return MatmulFlops(sum(parts.values()), dots, unknown,
                       dict(sorted(parts.items(), key=lambda item: -item[1])))


def _collect_calls(line: str, computations: dict[str, list[str]],
                   into: list[tuple[tuple[str, ...], int | None]]) -> None:
    if "=%" not in line and "branch_computations=" not in line:
        return  # calls nothing (the cheap test first: optimized HLO lines are long)
    body = LOOP_BODY.search(line)
    for callee in _CALLEE.findall(line):
        if body and callee == body.group(1):
            into.append(((callee,), loop_trip_count(line, computations)))
        else:
            into.append(((callee,), 1))
    branches = PREDICATED.findall(line)
    for group in BRANCHES.findall(line):
        branches += OPERAND.findall(group)
    if branches:  # a conditional runs one branch: count the costliest
        into.append((tuple(branches), 1))


