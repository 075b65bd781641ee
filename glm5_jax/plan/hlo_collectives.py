"""Bytes each kind of collective moves per device per step, read from compiled HLO text.

The compiled module is the per-device program after SPMD partitioning, so every shape
in it is a per-device shape. A collective inside a ``while`` body (the scanned layers)
runs once per iteration: its bytes are multiplied by the loop's trip count, read from
the loop condition's bound (``i < N``). Counted per op: the bytes of its result
(all-gather: the gathered array; reduce-scatter: the scattered piece; all-reduce and
all-to-all: the array; collective-permute: what arrives), which is what crosses the
device's links to within a factor set by the algorithm (ring all-reduce moves ~2x).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
    "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "s16": 2, "u16": 2, "f16": 2,
    "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
    "c128": 16,
}
KINDS = {
    "all-reduce": "all-reduce", "all-reduce-start": "all-reduce",
    "all-gather": "all-gather", "all-gather-start": "all-gather",
    "reduce-scatter": "reduce-scatter",
    "all-to-all": "all-to-all", "ragged-all-to-all": "all-to-all",
    "collective-permute": "collective-permute", "collective-permute-start": "collective-permute",
}
COLLECTIVE_KINDS = tuple(sorted(set(KINDS.values())))
_HEADER = re.compile(r"^(?:ENTRY )?%(\S+) \(.*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")
_ARRAY = re.compile(r"\b(" + "|".join(sorted(DTYPE_BYTES, key=len, reverse=True))
                    + r")\[([0-9,]*)\]")
_CALLEE = re.compile(r"\b(body|calls|true_computation|false_computation)=%([\w.\-]+)")
# Shared with the FLOP and byte counts (hlo_flops, hlo_bytes): one reading of the HLO text.
OPERAND = re.compile(r"%([\w.\-]+)")
LOOP_BODY = re.compile(r"\bbody=%([\w.\-]+)")
PREDICATED = re.compile(r"\b(?:true_computation|false_computation)=%([\w.\-]+)")
BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_CONDITION = re.compile(r"\bcondition=%([\w.\-]+)")
_CONSTANT = re.compile(r"= s(?:32|64)\[\]\S* constant\((\d+)\)")


@dataclasses.dataclass
class CollectiveStats:
    bytes_by_kind: dict[str, float]
    count_by_kind: dict[str, int]  # executions per step (trip counts applied)
    unknown_trip_counts: int  # while loops whose bound could not be read (counted once)

    @property
    def total_bytes(self) -> float:
        return sum(self.bytes_by_kind.values())


def array_bytes(shape: str, largest_only: bool = False) -> float:
    sizes = [DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims in _ARRAY.findall(shape)]
    if not sizes:
        return 0.0
    return float(max(sizes) if largest_only else sum(sizes))


def collective_stats(hlo_text: str) -> CollectiveStats:
    computations, entry = split_computations(hlo_text)
    own: dict[str, collections.Counter] = {}
    own_counts: dict[str, collections.Counter] = {}
    calls: dict[str, list[tuple[str, str | None]]] = {}
    for name, lines in computations.items():
        own[name], own_counts[name], calls[name] = collections.Counter(), collections.Counter(), []
        for line in lines:
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            _, shape, opcode, rest = match.groups()
            if opcode in KINDS:
                # "-start" ops of gathers/permutes return (operand, result, ...): the result
                # is the largest array; an all-reduce's tuple holds only results.
                largest = opcode.endswith("-start") and not opcode.startswith("all-reduce")
                own[name][KINDS[opcode]] += array_bytes(shape, largest_only=largest)
                own_counts[name][KINDS[opcode]] += 1
            condition = _CONDITION.search(rest)
            for role, callee in _CALLEE.findall(rest):
                calls[name].append((callee, condition.group(1) if role == "body" and condition
                                    else None))
            for group in BRANCHES.findall(rest):
                for callee in OPERAND.findall(group):
                    calls[name].append((callee, None))
    unknown = [0]
    memo: dict[str, tuple[collections.Counter, collections.Counter]] = {}

    def trip_count(condition: str) -> int:
        bounds = [int(v) for line in computations.get(condition, ())
                  for v in _CONSTANT.findall(line)]
        if len(bounds) == 1:
            return bounds[0]
        unknown[0] += 1
        return 1

    def total(name: str) -> tuple[collections.Counter, collections.Counter]:
        if name not in memo:
            memo[name] = (collections.Counter(), collections.Counter())  # cycles: count once
            bytes_, counts = collections.Counter(own.get(name, {})), collections.Counter(
                own_counts.get(name, {}))
            for callee, condition in calls.get(name, ()):
                times = trip_count(condition) if condition else 1
                sub_bytes, sub_counts = total(callee)
                for kind, value in sub_bytes.items():
                    bytes_[kind] += times * value
                for kind, value in sub_counts.items():
                    counts[kind] += times * value
            memo[name] = (bytes_, counts)
        return memo[name]

    bytes_, counts = total(entry)
    return CollectiveStats({k: float(bytes_.get(k, 0.0)) for k in COLLECTIVE_KINDS},
                           {k: int(counts.get(k, 0)) for k in COLLECTIVE_KINDS}, unknown[0])


def split_computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
    """HLO text as {computation name: its instruction lines}, and the ENTRY's name."""
    computations: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            computations[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif line.startswith("}"):
            current = None
        elif current is not None:
            computations[current].append(line)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


_KNOWN_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def loop_trip_count(while_line: str, computations: dict[str, list[str]]) -> int | None:
    """How many times a ``while`` runs its body: the ``known_trip_count`` XLA recorded in the
    loop's backend config, else the single integer constant of its condition (``i < N``);
    None when neither can be read."""
    known = _KNOWN_TRIP_COUNT.search(while_line)
    if known:
        return int(known.group(1))
    condition = _CONDITION.search(while_line)
    bounds = [int(v) for line in (computations.get(condition.group(1), ()) if condition else ())
              for v in _CONSTANT.findall(line)]
    return bounds[0] if len(bounds) == 1 else None

