"""What a program compiled ahead of time for a target needs and does, from XLA's own accounting.

    compiled, text = compile_with_text(lowered)
    report = analyse(trainer, target, compiled, text)

`jaxnets.train.ahead_of_time.compile_for_target` lowers the trainer's own step for a target and
calls these; the target's XLA compiler (libtpu for TPU targets, which runs on a CPU host) does
the work. The report:

  bytes_per_device   memory_analysis(): arguments, outputs, temporaries, generated code;
                     total = arguments + outputs - aliased (donated state) + temporaries + code
  fits               total <= the chip's HBM (jaxnets.parallel.chips)
  flops_per_step     the dots and convolutions of the per-device program (loops counted per
                     trip, jaxnets.parallel.hlo) x devices
  collectives        by kind from the compiled HLO (jaxnets.parallel.hlo), per device
  roofline           step time >= max(FLOPs / peak FLOP/s, HBM bytes / HBM bandwidth) per
                     device (HBM bytes: at least the arguments and outputs once); the MFU bound
                     is the model's FLOPs (without recomputation) over peak x that time
"""
from __future__ import annotations

import glob
import math
import os
import re
import tempfile
from typing import Any

from flax import nnx
from jax._src import config as jax_config   # enable_compilation_cache as a context (no public one)


from jaxnets.parallel import hlo, sharding
from jaxnets.parallel.targets import Target


def compile_with_text(lowered) -> tuple[Any, str]:
    """(compiled, its optimized HLO text). The TPU compiler's executable cannot print itself
    here (`as_text()` fails to re-read its async ops), so XLA dumps the module while compiling;
    the persistent cache is bypassed, or a cached program would dump nothing."""
    with tempfile.TemporaryDirectory(prefix="jaxnets-hlo-") as folder, \
            jax_config.enable_compilation_cache(False):
        compiled = lowered.compile(compiler_options={
            "xla_dump_to": folder, "xla_dump_hlo_as_text": True,
            "xla_dump_hlo_pass_re": "^$"})   # no per-pass dumps: the final module only
        dumps = sorted(glob.glob(os.path.join(folder, "*after_optimizations.txt")))
        if dumps:
            with open(dumps[-1]) as f:
                return compiled, f.read()
    return compiled, compiled.as_text()


def _cost(compiled) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):   # older jax: one dict per computation
        cost = cost[0] if cost else {}
    return dict(cost or {})


def analyse(trainer, target: Target, compiled, text: str,
            timings: dict | None = None) -> dict[str, Any]:
    mesh, config = trainer.mesh, trainer.config
    n = int(mesh.size)
    mem = compiled.memory_analysis()
    arguments, outputs = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    temporaries, code = int(mem.temp_size_in_bytes), int(mem.generated_code_size_in_bytes)
    aliased = int(mem.alias_size_in_bytes)
    total = arguments + outputs - aliased + temporaries + code
    chip = target.chip
    device_memory = chip.hbm_bytes if chip else _host_memory_bytes()
    stats = hlo.HloStats(text)
    cost = _cost(compiled)
    # FLOPs: every dot and convolution of the per-device program, loops counted per trip
    # (XLA's own cost analysis counts a scan's body once; kept as xla_cost_flops_per_device).
    flops_device = stats.matmul_flops()
    # HBM traffic: at least the arguments read and the outputs written once; XLA's estimate
    # where it is larger (it too counts a loop's body once, so it stays a lower bound).
    bytes_device = max(float(cost.get("bytes accessed", 0.0)), float(arguments + outputs))
    params = sum(r["size"] for r in _param_rows(trainer))
    state_total, state_per_device = sharding.layout_bytes(mesh, trainer.layout)
    batch = int(config.data.batch_size)
    report: dict[str, Any] = {
        "target": target.text,
        "platform": target.platform,
        "device_kind": compiled_device_kind(mesh),
        "devices": n,
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "params": int(params),
        "state_bytes": int(state_total),
        "state_bytes_per_device": int(state_per_device),
        "bytes_per_device": {"arguments": arguments, "outputs": outputs, "aliased": aliased,
                             "temporaries": temporaries, "code": code, "total": total},
        "device_memory_bytes": int(device_memory),
        "fits": bool(total <= device_memory),
        "batch_size": batch,
        "flops_per_step": flops_device * n,
        "flops_per_example": flops_device * n / batch,
        "xla_cost_flops_per_device": float(cost.get("flops", 0.0)),
        "hbm_bytes_lower_bound_per_device": bytes_device,
        "collectives": stats.collectives(),
    }
    model_flops = _model_flops(trainer)
    if model_flops:
        report["model_flops_per_step"] = model_flops
    if chip:
        compute_s = flops_device / chip.peak_flops
        memory_s = bytes_device / chip.hbm_bandwidth
        bound = max(compute_s, memory_s)
        useful = (model_flops or flops_device * n) / n
        report.update({
            "peak_flops_per_device": chip.peak_flops, "hbm_bandwidth": chip.hbm_bandwidth,
            "step_time_lower_bound_s": bound,
            "bound_by": "compute" if compute_s >= memory_s else "memory",
            "mfu_upper_bound": useful / (chip.peak_flops * bound) if bound > 0 else None})
    else:   # a CPU host has no published peak: no roofline
        report.update({"step_time_lower_bound_s": None, "mfu_upper_bound": None})
    if timings:
        report.update({k: round(v, 3) for k, v in timings.items()})
    return report


_OOM = re.compile(r"memory required for ([\w ]+?) \(([\d.]+)([KMGT]?)\) exceeds available HBM "
                  r"\(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def out_of_memory(message: str) -> bool:
    return "RESOURCE_EXHAUSTED" in message and ("HbmOom" in message or "Ran out of memory" in message)


def analyse_out_of_memory(trainer, target: Target, message: str,
                          timings: dict | None = None) -> dict[str, Any]:
    """The report of a step the compiler refused for want of HBM: `fits` false, the state's
    bytes from its layout and what the compiler said it needed (`compiler_required_bytes`)."""
    mesh, config = trainer.mesh, trainer.config
    state_total, state_per_device = sharding.layout_bytes(mesh, trainer.layout)
    found = _OOM.search(message)
    required = int(float(found.group(2)) * _UNITS[found.group(3)]) if found else None
    chip = target.chip
    report = {
        "target": target.text, "platform": target.platform,
        "device_kind": compiled_device_kind(mesh), "devices": int(mesh.size),
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "params": int(sum(r["size"] for r in _param_rows(trainer))),
        "state_bytes": int(state_total), "state_bytes_per_device": int(state_per_device),
        # Unknown past the point the compiler stopped; the total is at least its requirement
        # (temporaries) plus the state the step takes as its argument.
        "bytes_per_device": {"arguments": None, "outputs": None, "aliased": None,
                             "temporaries": required, "code": None,
                             "total": (required or 0) + int(state_per_device)},
        "device_memory_bytes": int(chip.hbm_bytes if chip else _host_memory_bytes()),
        "fits": False, "batch_size": int(config.data.batch_size),
        "flops_per_step": None, "flops_per_example": None,
        "collectives": {k: {"count": None, "bytes": None} for k in hlo.KINDS},
        "step_time_lower_bound_s": None, "mfu_upper_bound": None,
        "compiler_error": message.strip().splitlines()[0][:400],
        "compiler_required_bytes": required,
    }
    if timings:
        report.update({k: round(v, 3) for k, v in timings.items()})
    return report


def compiled_device_kind(mesh) -> str:
    return str(mesh.devices.flat[0].device_kind)


def _param_rows(trainer) -> list[dict]:
    """Layout rows of the model's trainable parameters (nnx.Param, not optimizer moments)."""
    rows = []
    for r in trainer.layout:
        if r["kind"] == "Param" and r["path"].split("/")[0] in ("model", "generator", "denoiser"):
            rows.append({**r, "size": math.prod(r["shape"])})
    if not rows:   # a task whose state names its modules otherwise: count every Param once
        rows = [{**r, "size": math.prod(r["shape"])} for r in trainer.layout
                if r["kind"] == "Param" and "/opt/" not in f"/{r['path']}/"]
    return rows


def _model_flops(trainer) -> float | None:
    """The task's own FLOP count of one train step (6 N per token for an LM): no recomputation."""
    try:
        module = nnx.merge(trainer.graphdef, trainer.abstract_state)
        return trainer.task.throughput(module).get("flops")
    except Exception:   # throughput may need concrete values (a task's own choice): skip it
        return None


def _host_memory_bytes() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def format_report(r: dict[str, Any]) -> str:
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    b = r["bytes_per_device"]
    head = [f"target {r['target']} ({r['device_kind']}): {r['devices']} devices, mesh {r['mesh']}",
            f"params {r['params']:,}; state {gib(r['state_bytes'])} in all, "
            f"{gib(r['state_bytes_per_device'])} per device"]
    if r.get("compiler_error"):
        return "\n".join(head + [f"fits: False (the compiler: {r['compiler_error']})"])
    lines = head + [
        f"per device: arguments {gib(b['arguments'])}, outputs {gib(b['outputs'])} "
        f"(aliased {gib(b['aliased'])}), temporaries {gib(b['temporaries'])}, "
        f"code {gib(b['code'])}; total {gib(b['total'])} of {gib(r['device_memory_bytes'])}"
        f" -> fits: {r['fits']}",
        f"FLOPs per step {r['flops_per_step']:.4g} ({r['flops_per_example']:.4g} per example)"]
    coll = ", ".join(f"{k} {v['count']} ({v['bytes'] / 2**20:.1f} MiB)"
                     for k, v in r["collectives"].items() if v["count"])
    lines.append("collectives per step (per device): " + (coll or "none"))
    if r.get("step_time_lower_bound_s") is not None:
        lines.append(f"roofline: step >= {r['step_time_lower_bound_s'] * 1e3:.2f} ms "
                     f"({r['bound_by']}-bound), MFU <= {r['mfu_upper_bound']:.2f}")
    return "\n".join(lines)
