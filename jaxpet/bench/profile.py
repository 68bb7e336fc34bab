"""Where a compiled step spends its time: a jax.profiler trace, summed per op and op category.

The trace's op events carry the names of the optimized HLO instructions; the step's HLO text
tells what each instruction computes, so the time can be split into matmuls, random bits
(dropout and masking), reductions, data movement, collectives and elementwise work.
"""

from __future__ import annotations

import glob
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.profiler import ProfileData

CATEGORIES = ("matmul", "random bits", "reduction", "data movement", "collective",
              "elementwise", "other")
_MOVEMENT = {"copy", "transpose", "bitcast", "slice", "dynamic-slice", "dynamic-update-slice",
             "concatenate", "pad", "gather", "scatter", "broadcast", "reshape", "iota",
             "get-tuple-element", "tuple", "parameter", "constant", "copy-start", "copy-done"}
_COLLECTIVE = {"all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "all-reduce-start", "all-reduce-done", "all-gather-start", "all-gather-done",
               "collective-permute-start", "collective-permute-done"}
# A loop's or call's event spans the events of the ops it runs: counting it would count twice.
_CONTAINERS = {"while", "call", "conditional", "async-start", "async-done"}
CONTAINER = "container"
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_RANDOM_SOURCE = re.compile(r"threefry|random_bits|jit\(_uniform\)|jit\(_bernoulli\)")
_OP_NAME = re.compile(r'op_name="([^"]+)"')


def parse_hlo(hlo_text: str) -> dict[str, dict[str, Any]]:
    """instruction name -> {opcode, computation, calls, target, op_name} for every instruction."""
    instructions: dict[str, dict[str, Any]] = {}
    computation = ""
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header and line.rstrip().endswith("{"):
            computation = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        target = _TARGET.search(line)
        op_name = _OP_NAME.search(line)
        instructions[match.group(1)] = {
            "opcode": match.group(2), "computation": computation,
            "calls": _CALLS.findall(line), "target": target.group(1) if target else "",
            "op_name": op_name.group(1) if op_name else ""}
    return instructions


def _computation_opcodes(instructions: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    """computation name -> every opcode (and custom-call target) it runs, callees included."""
    direct: dict[str, set[str]] = {}
    calls: dict[str, set[str]] = {}
    for info in instructions.values():
        ops = direct.setdefault(info["computation"], set())
        ops.add(info["opcode"])
        if info["target"]:
            ops.add("target:" + info["target"].lower())
        calls.setdefault(info["computation"], set()).update(info["calls"])
    closed: dict[str, set[str]] = {}

    def close(name: str, seen: frozenset[str]) -> set[str]:
        if name in closed:
            return closed[name]
        ops = set(direct.get(name, ()))
        for callee in calls.get(name, ()):
            if callee not in seen:
                ops |= close(callee, seen | {callee})
        closed[name] = ops
        return ops

    for name in direct:
        close(name, frozenset({name}))
    return closed


def categorize(opcodes: set[str]) -> str:
    """The category of an op that runs `opcodes` (its own and its fused computation's)."""
    targets = " ".join(o for o in opcodes if o.startswith("target:"))
    if {"dot", "convolution"} & opcodes or any(
            k in targets for k in ("gemm", "matmul", "cublas", "dot")):
        return "matmul"
    if "rng-bit-generator" in opcodes or "threefry" in targets or (
            {"xor", "shift-right-logical"} <= opcodes):
        return "random bits"
    if _COLLECTIVE & opcodes:
        return "collective"
    if {"reduce", "reduce-window", "sort"} & opcodes:
        return "reduction"
    computed = {o for o in opcodes if not o.startswith("target:")} - {"fusion", "custom-call"}
    if computed and computed <= _MOVEMENT:
        return "data movement"
    if computed - _MOVEMENT:
        return "elementwise"
    return "other"


def op_categories(hlo_text: str) -> dict[str, tuple[str, str]]:
    """instruction name -> (category, the JAX op_name it came from) for a compiled step."""
    instructions = parse_hlo(hlo_text)
    closed = _computation_opcodes(instructions)
    result = {}
    for name, info in instructions.items():
        if info["opcode"] in _CONTAINERS:
            result[name] = (CONTAINER, info["op_name"])
            continue
        opcodes = {info["opcode"]} | ({"target:" + info["target"].lower()}
                                     if info["target"] else set())
        for callee in info["calls"]:
            opcodes |= closed.get(callee, set())
        category = categorize(opcodes)
        if category != "matmul" and _RANDOM_SOURCE.search(info["op_name"]):
            category = "random bits"  # the counter-based generator's adds and rotations
        result[name] = (category, info["op_name"])
    return result


def _kernel_category(name: str) -> str:
    """A category from a GPU kernel name, for kernels the HLO names do not cover."""
    low = name.lower()
    if any(k in low for k in ("gemm", "xmma", "cutlass", "matmul", "dot", "nvjet")):
        return "matmul"
    if any(k in low for k in ("nccl", "all_reduce", "allreduce", "all_gather")):
        return "collective"
    if any(k in low for k in ("reduce", "softmax")):
        return "reduction"
    if any(k in low for k in ("copy", "transpose", "memcpy", "memset")):
        return "data movement"
    return "other"


def op_events(profile: Any) -> Iterator[tuple[str, int]]:
    """(op name, nanoseconds) of every op the device ran; on CPU, the XLA worker threads'."""
    devices = [p for p in profile.planes if p.name.startswith(("/device:GPU", "/device:TPU"))]
    if devices:
        for plane in devices:
            lines = list(plane.lines)
            ops = [line for line in lines if line.name == "XLA Ops"]
            for line in ops or [line for line in lines if line.name.startswith("Stream")]:
                for event in line.events:
                    stats = dict(event.stats)
                    yield str(stats.get("hlo_op", event.name)), event.duration_ns
        return
    host = profile.find_plane_with_name("/host:CPU")
    for line in host.lines if host is not None else ():
        if line.name.startswith(("tf_XLAEigen", "tf_XLAPjRtCpuClient", "XLA")):
            for event in line.events:
                if "::" not in event.name:  # runtime functions (executor, thread pool waits)
                    yield event.name, event.duration_ns


def summarize(events: Iterator[tuple[str, int]], categories: dict[str, tuple[str, str]],
              steps: int, top: int = 12) -> dict[str, Any]:
    """Seconds per step by category and for the `top` ops, with their shares of op time."""
    per_op: Counter[str] = Counter()
    for name, ns in events:
        if categories.get(name, ("",))[0] != CONTAINER:
            per_op[name] += ns
    total = sum(per_op.values()) or 1
    by_category: Counter[str] = Counter()
    for name, ns in per_op.items():
        by_category[categories.get(name, (_kernel_category(name), ""))[0]] += ns
    return {
        "op_seconds_per_step": total / 1e9 / steps,
        "categories": [{"category": c, "seconds_per_step": by_category[c] / 1e9 / steps,
                        "share": by_category[c] / total}
                       for c in CATEGORIES if by_category[c]],
        "top_ops": [{"op": name, "category": categories.get(name, (_kernel_category(name),))[0],
                     "seconds_per_step": ns / 1e9 / steps, "share": ns / total,
                     "source": categories.get(name, ("", ""))[1][-90:]}
                    for name, ns in per_op.most_common(top)],
    }


def profile_steps_by_op(step: Callable[[Any], Any], steps: int, hlo_text: str) -> dict[str, Any]:
    """Traces `steps` calls of step(None) (each blocks until done) and summarizes them by op.

    On a CPU the XLA worker threads run ops side by side, so op time can exceed wall time;
    the shares are of op time.
    """
    categories = op_categories(hlo_text)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        with jax.profiler.trace(folder):
            for _ in range(steps):
                step(None)
        wall = time.perf_counter() - start
        files = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)
        if not files:
            return {"error": "jax.profiler wrote no trace"}
        profile = ProfileData.from_file(files[0])
        summary = summarize(op_events(profile), categories, steps)
    return {"steps": steps, "wall_seconds_per_step": wall / steps, **summary}
