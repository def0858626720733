"""What a compiled program does per device, read from its optimized HLO text.

    stats = HloStats(text)          # text: the after-optimizations HLO module
    stats.collectives()             # {"all-gather": {"count": n, "bytes": b}, ...}
    stats.matmul_flops()            # 2 x MACs of every dot and convolution

Why parse the text: XLA's `cost_analysis()` counts a while loop's body once, so a scan over
32 layers reports the FLOPs of one. Here every computation is weighted by how often it runs:
a while body by its trip count (XLA's `known_trip_count`, else the bound of its condition's
`counter < N` compare, which is how a lax.scan's loop reads), fusions and branches once per
call. Async pairs (`all-gather-start` / `-done`) count once, at the start. A collective's
bytes are its result on one device (an all-gather's gathered array, a reduce-scatter's
shard; the largest buffer of an async start's tuple).
"""
from __future__ import annotations

import math
import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
                "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s")
# Called computations that run as part of the caller (not reducers: `to_apply` runs per element).
_CALLS = re.compile(r"\b(body|condition|calls|branch_computations|true_computation|"
                    r"false_computation)=(?:\{([^}]*)\}|%?([\w.\-]+))")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')


def _arrays(shape_text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(dtype, tuple(int(d) for d in dims.split(",") if d))
            for dtype, dims in _ARRAY.findall(shape_text) if dtype in _DTYPE_BYTES]


def _nbytes(array) -> int:
    dtype, dims = array
    return math.prod(dims) * _DTYPE_BYTES[dtype]


class HloStats:
    def __init__(self, text: str):
        self.computations: dict[str, list[tuple]] = {}   # name -> [(name, shape, op, rest)]
        self.entry = None
        current = None
        for line in text.splitlines():
            if line and not line[0].isspace() and line.rstrip().endswith("{"):
                header = _HEADER.match(line)
                if header:
                    current = header.group(2)
                    self.computations[current] = []
                    if header.group(1):
                        self.entry = current
                continue
            inst = _INSTRUCTION.match(line) if current else None
            if inst:
                self.computations[current].append(inst.groups())
        self.times = self._execution_counts()

    def _trip_count(self, line_rest: str, condition: str | None) -> int:
        known = _TRIP.search(line_rest)
        if known:
            return int(known.group(1))
        consts = [int(m) for _, _, op, rest in self.computations.get(condition, [])
                  if op == "constant" for m in re.findall(r"^(-?\d+)\)", rest)]
        compares = [rest for _, _, op, rest in self.computations.get(condition, [])
                    if op == "compare" and "direction=LT" in rest]
        return consts[0] if len(consts) == 1 and compares and consts[0] > 0 else 1

    def _execution_counts(self) -> dict[str, int]:
        edges: dict[str, list[tuple[str, int]]] = {name: [] for name in self.computations}
        for name, instructions in self.computations.items():
            for _, _, op, rest in instructions:
                called = {attr: [c.strip().lstrip("%") for c in (listed or single).split(",")]
                          for attr, listed, single in _CALLS.findall(rest)}
                trips = (self._trip_count(rest, (called.get("condition") or [None])[0])
                         if op == "while" else 1)
                for attr, names in called.items():
                    for callee in names:
                        edges[name].append((callee, trips if attr in ("body", "condition") else 1))
        times: dict[str, int] = {}

        def visit(name: str, n: int, depth: int) -> None:
            if name not in edges or depth > 100:
                return
            times[name] = times.get(name, 0) + n
            for callee, k in edges[name]:
                visit(callee, n * k, depth + 1)

        if self.entry:
            visit(self.entry, 1, 0)
        return times

    def collectives(self) -> dict[str, dict[str, int]]:
        totals = {k: {"count": 0, "bytes": 0} for k in KINDS}
        for name, n in self.times.items():
            for _, shape, op, _ in self.computations[name]:
                kind = op[:-len("-start")] if op.endswith("-start") else op
                if kind in KINDS:
                    totals[kind]["count"] += n
                    totals[kind]["bytes"] += n * max(map(_nbytes, _arrays(shape)), default=0)
        return totals

    def matmul_flops(self) -> float:
        """2 x multiply-adds of every dot and convolution, each weighted by how often it runs."""
        total = 0.0
        for name, n in self.times.items():
            shapes = {iname: _arrays(shape) for iname, shape, _, _ in self.computations[name]}
            for _, shape, op, rest in self.computations[name]:
                if op not in ("dot", "convolution"):
                    continue
                out = _arrays(shape)
                operands = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])
                if not out or len(operands) < 2:
                    continue
                lhs, rhs = (shapes.get(o, [None])[0] for o in operands[:2])
                total += n * 2.0 * math.prod(out[0][1]) * _contracted(op, rest, lhs, rhs)
        return total


def _contracted(op: str, rest: str, lhs, rhs) -> float:
    """Multiply-adds per output element: the contracted sizes of a dot, the kernel's
    window x input features (per group) of a convolution."""
    if op == "dot":
        dims = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", rest)
        if lhs is None or dims is None:
            return 0
        return math.prod(lhs[1][int(d)] for d in dims.group(1).split(",") if d)
    labels = re.search(r"dim_labels=[^_]+_([^-]+)->", rest)
    if rhs is None or labels is None or "o" not in labels.group(1):
        return 0
    kernel = rhs[1]
    taps = math.prod(kernel) / kernel[labels.group(1).index("o")]
    # A dilated input (lhs_dilate) puts holes between its elements: a window of w taps over
    # an input dilated by d meets w / d real elements on average. The TPU compiler writes
    # batched matmuls this way (window = lhs_dilate = the batch dims: one real tap).
    dilate = re.search(r"lhs_dilate=([0-9x]+)", rest)
    return taps / math.prod(int(d) for d in dilate.group(1).split("x")) if dilate else taps


def collectives(text: str) -> dict[str, dict[str, int]]:
    return HloStats(text).collectives()
