"""HBM bytes a compiled program reads and writes per step, read from its HLO text with every
loop's trip count applied.

XLA's ``cost_analysis()["bytes accessed"]`` counts a ``while`` body once, like its FLOPs.
This is the same kind of estimate made per execution: every instruction the program runs
outside a fusion reads its operands and writes its result (a fusion's inside stays on chip),
with the in-place exceptions XLA's cost analysis makes (``HloCostAnalysis``,
``FusionProcessOperandBytesRead``/``FusionProcessOutputBytesAccessed``):

* a fusion parameter used only by ``dynamic-slice``/``slice`` (also inside a nested fusion)
  reads the slices, not the array (a scanned layer reads its layer of the stacked weights);
* a fusion parameter used only as the buffer of a ``dynamic-update-slice`` is not read, and a
  fusion whose output is a ``dynamic-update-slice`` writes the update, not the array;
* bookkeeping (parameters, constants, tuples, get-tuple-element, bitcasts) moves nothing.

A ``while`` body counts its trip count times, a conditional its costliest branch. It is an
estimate of traffic, not of the compiler's memory placement: arrays the TPU keeps in on-chip
memory (``S(1)`` layouts) are counted as if they went to HBM.
"""

from __future__ import annotations

import dataclasses
import re

from glm5_jax.plan.hlo_collectives import (
    BRANCHES,
    LOOP_BODY,
    OPERAND,
    PREDICATED,
    array_bytes,
    loop_trip_count,
    split_computations,
)

_NAME = re.compile(r"\s*(?:ROOT )?%(\S+)$")
_OPCODE = re.compile(r"[\]})] ([a-z][a-z0-9\-]*)\(")  # the shape ends in ], } or )
_CALLS = re.compile(r"\bcalls=%([\w.\-]+)")
_TO_APPLY = re.compile(r"\bto_apply=%([\w.\-]+)")
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
         "add-dependency", "opt-barrier", "partition-id", "replica-id", "domain"}
_SLICES = {"dynamic-slice", "slice"}


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str
    opcode: str
    arguments: str  # the text inside the parentheses: operand names, or a parameter's number
    attributes: str
    root: bool

    @property
    def operands(self) -> list[str]:
        return OPERAND.findall(self.arguments)


@dataclasses.dataclass(frozen=True)
class HloBytes:
    bytes: float  # per execution of the program
    unknown_trip_counts: int  # loops counted once because their bound could not be read


def parse(lines: list[str]) -> list[Instruction]:
    instructions = []
    for line in lines:
        head, _, tail = line.partition(" = ")
        name, opcode = _NAME.match(head), _OPCODE.search(tail)
        if name and opcode:
            arguments, _, attributes = tail[opcode.end():].partition(")")
            instructions.append(Instruction(name.group(1), tail[:opcode.start() + 1],
                                            opcode.group(1), arguments, attributes,
                                            head.lstrip().startswith("ROOT")))
    return instructions


def fusion_bytes(fusion: Instruction, shapes: dict[str, str],
                 computations: dict[str, list[Instruction]]) -> float:
    """Operands read plus results written by one fusion (the module docstring's rules)."""
    fused = _callee(_CALLS, fusion, computations)
    total = 0.0
    for number, operand in enumerate(fusion.operands):
        full = array_bytes(shapes.get(operand, ""))
        total += min(full, parameter_reads(fused, number, full, computations))
    by_name = {i.name: i for i in fused}
    root = next((i for i in fused if i.root), None)
    outputs = ([by_name.get(o) for o in root.operands] if root and root.opcode == "tuple"
               else [root])
    for output in outputs:
        if output is not None and output.opcode == "dynamic-update-slice":
            update = by_name.get(output.operands[1])
            total += array_bytes(update.shape) if update else 0.0
        elif output is not None:
            total += array_bytes(output.shape)
    return total


def _callee(pattern: re.Pattern, instruction: Instruction,
            computations: dict[str, list[Instruction]]) -> list[Instruction]:
    match = pattern.search(instruction.attributes)
    return computations.get(match.group(1), []) if match else []


def parameter_reads(fused: list[Instruction], number: int, full: float,
                    computations: dict[str, list[Instruction]]) -> float:
    """Bytes a fused computation reads of its parameter ``number`` (``full``: all of it),
    following it into fusions nested inside."""
    parameter = next((i.name for i in fused
                      if i.opcode == "parameter" and i.arguments.strip() == str(number)), None)
    if parameter is None:
        return full
    reads = 0.0
    for user in (i for i in fused if parameter in i.operands):
        if user.opcode in _SLICES and user.operands[0] == parameter:
            reads += array_bytes(user.shape)
        elif user.opcode == "dynamic-update-slice" and user.operands[0] == parameter:
            continue  # updated in place: not read
        elif user.opcode == "fusion":
            nested = _callee(_CALLS, user, computations)
            reads += sum(parameter_reads(nested, j, full, computations)
                         for j, name in enumerate(user.operands) if name == parameter)
        else:
            return full
    return reads


def bytes_accessed(hlo_text: str, count_trips: bool = True) -> HloBytes:
    """Bytes read and written per execution of ``hlo_text`` (``compiled.as_text()``);
    ``count_trips=False`` counts every loop body once, as XLA's cost analysis does."""
    lines, entry = split_computations(hlo_text)
    computations = {name: parse(body) for name, body in lines.items()}
    unknown = 0
    memo: dict[str, float] = {}

    def trip_count(instruction: Instruction) -> int:
        nonlocal unknown
        if not count_trips:
            return 1
        count = loop_trip_count(instruction.attributes, lines)
        if count is None:
            unknown += 1
            return 1
        return count

    def total(name: str) -> float:
        if name in memo:
            return memo[name]
        memo[name] = 0.0  # a cycle would count once
        shapes = {i.name: i.shape for i in computations.get(name, ())}
        result = 0.0
        for instruction in computations.get(name, ()):
            result += own_bytes(instruction, shapes)
        memo[name] = result
        return result

    def own_bytes(instruction: Instruction, shapes: dict[str, str]) -> float:
        opcode, attributes = instruction.opcode, instruction.attributes
        if opcode in _FREE:
            return 0.0
        if opcode == "while":
            body = LOOP_BODY.search(attributes)
            return trip_count(instruction) * total(body.group(1)) if body else 0.0
        if opcode == "call":
            callee = _TO_APPLY.search(attributes)
            return total(callee.group(1)) if callee else 0.0
        if opcode == "conditional":
            branches = PREDICATED.findall(attributes)
            for group in BRANCHES.findall(attributes):
                branches += OPERAND.findall(group)
            return max((total(b) for b in branches), default=0.0)
        if opcode == "fusion":
            return fusion_bytes(instruction, shapes, computations)
        operands = instruction.operands
        if opcode == "dynamic-slice":
            return 2 * array_bytes(instruction.shape)
        if opcode == "dynamic-update-slice" and len(operands) > 1:
            return 2 * array_bytes(shapes.get(operands[1], ""))
        return array_bytes(instruction.shape) + sum(array_bytes(shapes.get(o, ""))
                                                    for o in operands)

    return HloBytes(total(entry), unknown)


def loop_factor(hlo_text: str) -> float:
    """Bytes per step over bytes with every loop body counted once, by this estimate.

    XLA's ``bytes accessed`` counts a loop body once and prices each operation with the
    backend's own model (the TPU's counts operand re-reads this estimate does not), so the
    planner keeps XLA's figure and scales it by this factor: the loops' share of the traffic
    as this estimate sees it, repeated by their trip counts.
    """
    once = bytes_accessed(hlo_text, count_trips=False).bytes
    return bytes_accessed(hlo_text).bytes / once if once > 0 else 1.0
