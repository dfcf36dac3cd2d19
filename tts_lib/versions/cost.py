"""Training time and cost: an estimate before training, the actual cost after (used by the fine-tune entry point).

    table = load_gpu_table(None)                      # or a YAML file of your own prices
    machine = detect_machine(table)                   # what the steps are timed on: a GPU (its table row) or the CPU
    throughput = measure_training_throughput(step)    # a few real forward+backward steps on this machine
    estimate = estimate_cost(planned_tokens, throughput, machine.key, table, scratch_tokens,
                             price_for="H100", machine=machine.name)   # price_for: the `gpu` setting
    print(format_estimate(estimate))
    ...
    meta["cost"]["actual_usd"] = actual_cost(wall_seconds, machine.key, table)["usd"]

The `gpu` setting names the GPU to price the plan for ("H100", "A100-40GB", "RTX-6000-Ada@364"): its row
comes first. Times are measured on this machine; the measured GPU's row is what it will do, the other
GPUs' rows are scaled by the ratio of dense bf16 TFLOPs from the spec sheets, a rough guide (memory
bandwidth and kernel efficiency differ) that is labelled as such. A CPU measurement cannot be scaled
to a GPU, so on a CPU only this machine's time is shown (and the requested GPU's row says why it has none).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from tts_lib.training.flops import ASSUMED_MFU


@dataclass(frozen=True)
class GpuInfo:
    name: str
    usd_per_hour: float | None  # None only for a GPU named with its TFLOPs alone (gpu="NAME@TFLOPS")
    bf16_tflops: float  # dense (no sparsity), from NVIDIA's spec sheets
    memory_gb: float | None  # None as usd_per_hour


# Prices: typical on-demand list prices for one GPU on public GPU clouds (Lambda, RunPod, AWS, GCP) in 2025-26,
# written down as typical, not looked up per run. They vary by provider and change often: override them with
# load_gpu_table(YAML) or `--gpu-price NAME=USD`. TFLOPs: dense bf16 tensor-core figures from NVIDIA's data sheets.
GPU_TABLE: dict[str, GpuInfo] = {
    "B200-180GB": GpuInfo("B200-180GB", 5.99, 2250.0, 180),  # HGX B200; sheets quote 4.5 PFLOPs with sparsity
    "H200-141GB": GpuInfo("H200-141GB", 3.79, 989.0, 141),  # H100's compute, more and faster memory
    "H100-80GB": GpuInfo("H100-80GB", 2.99, 989.0, 80),  # SXM; the PCIe card is about 756
    "A100-80GB": GpuInfo("A100-80GB", 1.79, 312.0, 80),
    "A100-40GB": GpuInfo("A100-40GB", 1.29, 312.0, 40),
    "L40S": GpuInfo("L40S", 0.99, 362.0, 48),
    "A10G": GpuInfo("A10G", 1.01, 70.0, 24),  # approximate: NVIDIA publishes no A10G sheet (AWS's A10 variant)
    "L4": GpuInfo("L4", 0.80, 121.0, 24),
}
_GPU_FIELDS = ("usd_per_hour", "bf16_tflops", "memory_gb")

CPU_ROW = "this machine"
CPU = "CPU"  # Machine.name when there is no CUDA device


def load_gpu_table(path: str | Path | None = None) -> dict[str, GpuInfo]:
    """The default table, with the entries of a YAML file `{name: {usd_per_hour, bf16_tflops, memory_gb}}` merged
    over it: a known GPU may change some fields, a new GPU must give all three."""
    table = dict(GPU_TABLE)
    if path is None:
        return table
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of GPU name -> {{{', '.join(_GPU_FIELDS)}}}, found {data!r}")
    for name, fields in data.items():
        if not isinstance(fields, dict):
            raise ValueError(f"{path}: {name}: expected a mapping of {list(_GPU_FIELDS)}, found {fields!r}")
        unknown = sorted(set(fields) - set(_GPU_FIELDS))
        if unknown:
            raise ValueError(f"{path}: {name}: unknown fields {unknown}; allowed fields are {list(_GPU_FIELDS)}")
        for k, v in fields.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                raise ValueError(f"{path}: {name}.{k}: expected a positive number, found {v!r}")
        name = str(name)
        if name in table:
            table[name] = dataclasses.replace(table[name], **{k: float(v) for k, v in fields.items()})
        else:
            missing = [k for k in _GPU_FIELDS if k not in fields]
            if missing:
                raise ValueError(f"{path}: {name} is a new GPU: give all of {list(_GPU_FIELDS)}; missing {missing}")
            table[name] = GpuInfo(name, **{k: float(fields[k]) for k in _GPU_FIELDS})
    return table


def parse_price_overrides(items: list[str], table: dict[str, GpuInfo] | None = None) -> dict[str, GpuInfo]:
    """A copy of `table` (default GPU_TABLE) with the prices of `NAME=USD_PER_HOUR` items (CLI flags) replaced."""
    table = dict(GPU_TABLE if table is None else table)
    for item in items:
        name, sep, value = item.partition("=")
        try:
            price = float(value) if sep else -1.0
        except ValueError:
            price = -1.0
        if price <= 0:
            raise ValueError(f"price override {item!r}: expected NAME=USD_PER_HOUR, e.g. A100-80GB=1.50")
        key = table_key(name, table)
        if key is None:
            raise ValueError(f"price override {item!r}: unknown GPU {name!r}; known GPUs: {', '.join(table)}")
        table[key] = dataclasses.replace(table[key], usd_per_hour=price)
    return table


def gpu_key_for(device_name: str, memory_gb: float | None = None) -> str | None:
    """The GPU_TABLE key for a CUDA device name (as torch.cuda.get_device_name reports it), or None if unknown.
    `memory_gb` tells an A100's size when the name does not; None (a name someone typed, "A100"): the larger
    card, the one clouds rent most."""
    name = device_name.upper()
    if re.search(r"(?<![A-Z])B200", name):  # not GB200 (Grace-Blackwell, reported under its own name)
        return "B200-180GB"
    if re.search(r"(?<![A-Z])H200", name):  # not GH200 (Grace-Hopper)
        return "H200-141GB"
    if "H100" in name:
        return "H100-80GB"
    if "A100" in name:
        # The name does not always carry the size ("NVIDIA A100-SXM4-..."): memory decides.
        if "40GB" in name or "80GB" in name:
            return "A100-40GB" if "40GB" in name else "A100-80GB"
        return "A100-80GB" if memory_gb is None or memory_gb > 60 else "A100-40GB"
    if "L40S" in name:
        return "L40S"
    if "A10G" in name:
        return "A10G"
    if re.search(r"\bL4\b", name):  # not L40 or L40S
        return "L4"
    return None


def _plain(name: str) -> str:
    """'NVIDIA H100 80GB' -> 'H10080GB': case, the vendor's name and separators do not matter."""
    return re.sub(r"[\s_\-]+", "", name.upper().removeprefix("NVIDIA"))


def table_key(name: str, table: dict[str, GpuInfo]) -> str | None:
    """The row of `table` a GPU name means: a key (any case or separators), a short name ("H100", "A100": the
    larger card) or a CUDA device name ("NVIDIA H100 80GB HBM3"); None when it names none of them."""
    key = {_plain(k): k for k in table}.get(_plain(name)) or gpu_key_for(name)
    return key if key in table else None


def resolve_gpu(spec: str, table: dict[str, GpuInfo]) -> GpuInfo:
    """The GPU a plan is priced for, from the `gpu` setting: a name table_key knows gives its table row;
    "NAME@TFLOPS" names a GPU missing from the table by its dense bf16 spec TFLOPs (timed by them, not priced)."""
    name, at, tflops_text = spec.partition("@")
    known = ", ".join(table) + " (or short names: H100, A100, ...)"
    if not at:
        key = table_key(name, table)
        if key is None:
            raise ValueError(
                f"gpu {spec!r}: not a GPU of the price table; known: {known}. For another GPU give its dense bf16 "
                f"spec TFLOPs as NAME@TFLOPS (e.g. 'RTX-6000-Ada@364': time without a price), or add it with its "
                "price to a gpu_prices YAML file ({NAME: {usd_per_hour, bf16_tflops, memory_gb}})"
            )
        return table[key]
    try:
        tflops = float(tflops_text)
    except ValueError:
        tflops = -1.0
    if not name.strip() or not tflops > 0:
        raise ValueError(f"gpu {spec!r}: expected NAME@TFLOPS with the dense bf16 spec TFLOPs, e.g. 'RTX-6000-Ada@364'")
    key = table_key(name, table)
    if key is not None:
        raise ValueError(
            f"gpu {spec!r}: {key} is in the price table ({table[key].bf16_tflops:g} TFLOPs); name it without "
            "@TFLOPS, or change its figures in a gpu_prices YAML file"
        )
    return GpuInfo(name.strip(), None, tflops, None)


@dataclass(frozen=True)
class Machine:
    name: str  # CPU, or CUDA device 0's name as torch reports it, e.g. "NVIDIA H200"
    key: str | None  # its row in the GPU table; None for a CPU or a GPU missing from the table


def detect_machine(table: dict[str, GpuInfo]) -> Machine:
    """What this machine computes on: CUDA device 0 (and its table row, if any), else the CPU."""
    if not torch.cuda.is_available():
        return Machine(CPU, None)
    name = torch.cuda.get_device_name(0)
    key = gpu_key_for(name, torch.cuda.get_device_properties(0).total_memory / 2**30)
    if key not in table:
        key = {_plain(k): k for k in table}.get(_plain(name))  # a gpu_prices row named as the device
    return Machine(name, key)


def detect_gpu(table: dict[str, GpuInfo]) -> str | None:
    """The table key of CUDA device 0, or None on a CPU or a GPU missing from the table."""
    return detect_machine(table).key


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float
    seconds_per_step: float
    steps: int


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # CUDA kernels run asynchronously: wait for them before reading the clock


def measure_training_throughput(step_fn: Callable[[], int], warmup: int = 2, steps: int = 5) -> Throughput:
    """Time `steps` calls of `step_fn` (one forward+backward on a real batch, returning its supervised tokens)
    after `warmup` untimed calls (allocator growth, autotuning and compilation happen there)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1 to measure anything, found {steps}")
    for _ in range(warmup):
        step_fn()
    _sync()
    start = time.perf_counter()
    tokens = sum(int(step_fn()) for _ in range(steps))
    _sync()
    seconds = time.perf_counter() - start
    if tokens <= 0 or seconds <= 0:
        raise ValueError(
            f"throughput measurement saw {tokens} tokens in {seconds:.3g} s: step_fn must return the number of "
            "supervised tokens of its batch (> 0)"
        )
    return Throughput(tokens_per_s=tokens / seconds, seconds_per_step=seconds / steps, steps=steps)


@dataclass
class CostRow:
    gpu: str
    basis: str  # "measured", "scaled from <gpu> by spec TFLOPs", or why there is no time or price
    usd_per_hour: float | None
    hours: float | None  # None: this GPU cannot be timed from the measurement
    usd: float | None
    scratch_hours: float | None = None
    scratch_usd: float | None = None


@dataclass
class CostEstimate:
    planned_tokens: int
    scratch_tokens: int | None
    tokens_per_s: float  # on the measuring machine
    measured_on: str | None  # GPU_TABLE key, None for a CPU or a GPU missing from the table
    hours: float  # on the measuring machine
    scratch_hours: float | None
    rows: list[CostRow] = field(default_factory=list)  # the priced-for GPU's first
    notes: list[str] = field(default_factory=list)
    machine: str = CPU  # what measured: CPU or the CUDA device's name
    price_for: str | None = None  # the GPU the plan is priced for (the `gpu` setting); None: the measured one

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _usd(hours: float | None, price: float | None) -> float | None:
    return None if hours is None or price is None else hours * price


def computed_row(info: GpuInfo, est: CostEstimate, flops_per_token: float, mfu: float) -> CostRow:
    """A GPU's time from counted FLOPs at an assumed MFU: for when nothing measured can be scaled to it."""
    per_token_s = flops_per_token / (info.bf16_tflops * 1e12 * mfu)
    hours = est.planned_tokens * per_token_s / 3600
    scratch = None if est.scratch_tokens is None else est.scratch_tokens * per_token_s / 3600
    basis = f"computed: counted FLOPs at an assumed MFU of {mfu:.0%}"
    if info.usd_per_hour is None:
        basis += "; not in the price table, so no price"
    price = info.usd_per_hour
    return CostRow(info.name, basis, price, hours, _usd(hours, price), scratch, _usd(scratch, price))


def estimate_cost(
    planned_tokens: int,
    throughput: Throughput,
    measured_on: str | None,
    table: dict[str, GpuInfo],
    scratch_tokens: int | None = None,
    *,
    price_for: str | None = None,
    machine: str | None = None,
    flops_per_token: float | None = None,
    mfu: float = ASSUMED_MFU,
) -> CostEstimate:
    """Hours and dollars for `planned_tokens` (training from the parent version) and, when given,
    `scratch_tokens` (the same data trained from the base model), on every GPU of `table`.

    `measured_on`: the table key of the GPU `throughput` was measured on; None for a CPU or a GPU missing
    from the table, which `machine` then names (Machine.name; default CPU). `price_for`: the `gpu` setting,
    the GPU to price the plan for (a key, a short name such as "H100", or "NAME@TFLOPS"); its row comes first.
    `flops_per_token`: the model's counted training FLOPs per supervised token (tts_lib.training.flops); with it a
    measurement that cannot be scaled (a CPU's) still gets GPU rows, computed at the assumed `mfu` and labelled so."""
    if measured_on is not None and measured_on not in table:
        raise ValueError(f"measured_on {measured_on!r} is not in the GPU table ({', '.join(table)}); pass None")
    target = resolve_gpu(price_for, table) if price_for else None
    tps = throughput.tokens_per_s
    est = CostEstimate(
        planned_tokens=planned_tokens,
        scratch_tokens=scratch_tokens,
        tokens_per_s=tps,
        measured_on=measured_on,
        hours=planned_tokens / tps / 3600,
        scratch_hours=None if scratch_tokens is None else scratch_tokens / tps / 3600,
        machine=machine or measured_on or CPU,
        price_for=target.name if target else None,
    )
    if measured_on is None:
        # Nothing to scale from: a CPU is not a GPU, and an unlisted GPU has no TFLOPs here. A CPU is not rented
        # by the hour here, so it gets a time but no price. Counted FLOPs give the GPUs a computed time instead.
        on_cpu = est.machine == CPU
        others = [info for info in table.values() if target is None or info.name != target.name]
        if target is not None and flops_per_token is not None:
            est.rows.append(computed_row(target, est, flops_per_token, mfu))
        elif target is not None:
            why = "cannot be timed from a CPU measurement" if on_cpu else f"cannot be scaled from {est.machine}"
            est.rows.append(CostRow(target.name, why, target.usd_per_hour, None, None))
        if on_cpu:
            basis = "measured; CPU time is free here, so no price"
            est.rows.append(CostRow(CPU_ROW, basis, None, est.hours, None, est.scratch_hours, None))
        else:
            basis = "measured; not in the price table, so no price"
            est.rows.append(CostRow(est.machine, basis, None, est.hours, None, est.scratch_hours, None))
            est.notes.append(
                f"{est.machine} is not in the price table: add '{est.machine}: {{usd_per_hour, bf16_tflops, "
                "memory_gb}' to a gpu_prices YAML file to price it and scale it to the other GPUs"
            )
        if flops_per_token is not None:
            est.rows += [computed_row(info, est, flops_per_token, mfu) for info in others]
            est.notes.append(f"computed rows: counted FLOPs at an assumed MFU of {mfu:.0%} of dense bf16 TFLOPs, "
                             "not measured; timing steps on a GPU measures them")  # fmt: skip
        elif on_cpu:
            est.notes.append("measure on a GPU for GPU estimates")
        return est
    base = table[measured_on]
    gpus = [base, *(info for key, info in table.items() if key != measured_on)]
    if target is not None:
        gpus = [target, *(info for info in gpus if info.name != target.name)]
    for info in gpus:
        ratio = info.bf16_tflops / base.bf16_tflops  # a GPU with twice the TFLOPs is taken to take half the time
        hours = est.hours / ratio
        scratch = None if est.scratch_hours is None else est.scratch_hours / ratio
        basis = "measured" if info.name == measured_on else f"scaled from {measured_on} by spec TFLOPs"
        if info.usd_per_hour is None:
            basis += f" (given: {info.bf16_tflops:g}); not in the price table, so no price"
        price = info.usd_per_hour
        est.rows.append(CostRow(info.name, basis, price, hours, _usd(hours, price), scratch, _usd(scratch, price)))
    est.notes.append("scaled rows assume time goes with dense bf16 TFLOPs: a rough guide, not a measurement")
    return est


def format_duration(hours: float | None) -> str:
    if hours is None:
        return "-"
    minutes = round(hours * 60)
    if minutes < 1:
        return "<1 min"
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _money(usd: float | None) -> str:
    return "-" if usd is None else f"${usd:.2f}"


def format_estimate(estimate: CostEstimate) -> str:
    """A plain-text table: GPU | $/h | from parent: time, cost | from scratch: time, cost | basis."""
    e = estimate
    where = e.measured_on or f"this machine ({e.machine}{'' if e.machine == CPU else ', not in the price table'})"
    lines = [f"planned: {e.planned_tokens:,} tokens at {e.tokens_per_s:,.0f} tokens/s measured on {where}"]
    if e.price_for is not None:
        lines.append(f"priced for: {e.price_for} (the first row)")
    if e.scratch_tokens is not None:
        lines.append(f"from scratch: {e.scratch_tokens:,} tokens")
    header = ["GPU", "$/h", "from parent: time", "cost"]
    if e.scratch_tokens is not None:
        header += ["from scratch: time", "cost"]
    header.append("basis")
    rows = []
    for r in e.rows:
        price = "-" if r.usd_per_hour is None else f"{r.usd_per_hour:.2f}"
        row = [r.gpu, price, format_duration(r.hours), _money(r.usd)]
        if e.scratch_tokens is not None:
            row += [format_duration(r.scratch_hours), _money(r.scratch_usd)]
        row.append(r.basis)
        rows.append(row)
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append(" | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    lines += [f"note: {n}" for n in e.notes]
    return "\n".join(lines)


def actual_cost(wall_seconds: float, gpu: str | None, table: dict[str, GpuInfo]) -> dict:
    """What a finished run cost: {"gpu", "hours", "usd"}; usd is None on a CPU or a GPU missing from the table."""
    hours = wall_seconds / 3600
    info = table.get(gpu) if gpu is not None else None
    return {"gpu": gpu, "hours": hours, "usd": None if info is None else hours * info.usd_per_hour}
