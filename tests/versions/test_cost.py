"""Time and cost estimates: GPU name mapping and detection, the `gpu` setting (the GPU to price the plan for:
aliases, unknown GPUs by their TFLOPs), price table overrides, estimate arithmetic, formatting."""

import json
import re
import time
import types
from pathlib import Path

import pytest

from tts_lib.versions import cost
from tts_lib.versions.cost import GPU_TABLE, Throughput

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "finetune.ipynb"


def fake_cuda(monkeypatch, name: str, gib: float) -> None:
    """torch as it looks on a machine whose CUDA device 0 is `name`."""
    props = types.SimpleNamespace(name=name, total_memory=int(gib * 2**30))
    monkeypatch.setattr(cost.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cost.torch.cuda, "get_device_name", lambda i=0: name)
    monkeypatch.setattr(cost.torch.cuda, "get_device_properties", lambda i=0: props)


@pytest.mark.parametrize(
    "name, memory_gb, key",
    [
        ("NVIDIA A100-SXM4-80GB", 79.2, "A100-80GB"),
        ("NVIDIA A100-SXM4-40GB", 39.4, "A100-40GB"),
        ("NVIDIA A100-PCIE-40GB", 39.4, "A100-40GB"),
        ("NVIDIA A100 80GB PCIe", 79.2, "A100-80GB"),
        ("NVIDIA A100-SXM4", 79.2, "A100-80GB"),
        ("NVIDIA H100 80GB HBM3", 79.1, "H100-80GB"),
        ("NVIDIA H200", 139.8, "H200-141GB"),
        ("NVIDIA H200 NVL", 139.8, "H200-141GB"),
        ("NVIDIA B200", 178.4, "B200-180GB"),
        ("NVIDIA GH200 480GB", 94.5, None),  # Grace-Hopper: not an H200
        ("NVIDIA L40S", 44.4, "L40S"),
        ("NVIDIA A10G", 22.0, "A10G"),
        ("NVIDIA L4", 22.0, "L4"),
        ("NVIDIA L40", 44.4, None),
        ("NVIDIA GeForce RTX 4090", 24.0, None),
        ("", 0.0, None),
    ],
)
def test_gpu_key_for_maps_cuda_names_to_table_keys(name, memory_gb, key):
    assert cost.gpu_key_for(name, memory_gb) == key
    assert key is None or key in GPU_TABLE


def test_detect_gpu_is_none_without_cuda(monkeypatch):
    monkeypatch.setattr(cost.torch.cuda, "is_available", lambda: False)
    assert cost.detect_gpu(GPU_TABLE) is None


def test_detect_machine_knows_an_h200_and_never_calls_a_gpu_the_cpu(monkeypatch):
    fake_cuda(monkeypatch, "NVIDIA H200", 139.8)
    machine = cost.detect_machine(GPU_TABLE)
    assert machine == cost.Machine("NVIDIA H200", "H200-141GB") and cost.detect_gpu(GPU_TABLE) == "H200-141GB"
    text = cost.format_estimate(cost.estimate_cost(3600, Throughput(1.0, 1.0, 5), machine.key, GPU_TABLE))
    assert "measured on H200-141GB" in text and "CPU" not in text

    fake_cuda(monkeypatch, "NVIDIA RTX PRO 6000 Blackwell Server Edition", 95.0)  # a GPU the table lacks
    machine = cost.detect_machine(GPU_TABLE)
    assert machine.key is None and machine.name == "NVIDIA RTX PRO 6000 Blackwell Server Edition"
    est = cost.estimate_cost(3600, Throughput(1.0, 1.0, 5), None, GPU_TABLE, machine=machine.name)
    text = cost.format_estimate(est)
    assert "CPU" not in text and f"this machine ({machine.name}, not in the price table)" in text
    assert est.rows[0].gpu == machine.name and est.rows[0].hours == pytest.approx(1.0) and est.rows[0].usd is None
    assert f"add '{machine.name}: " in est.notes[0]


def test_a_gpu_added_by_yaml_under_its_device_name_is_detected(monkeypatch, tmp_path):
    path = tmp_path / "gpus.yaml"
    path.write_text("RTX PRO 6000 Blackwell Server Edition: {usd_per_hour: 1.9, bf16_tflops: 500, memory_gb: 96}\n")
    fake_cuda(monkeypatch, "NVIDIA RTX PRO 6000 Blackwell Server Edition", 95.0)
    assert cost.detect_gpu(cost.load_gpu_table(path)) == "RTX PRO 6000 Blackwell Server Edition"


@pytest.mark.parametrize(
    "spec, key",
    [
        ("H100", "H100-80GB"),
        ("h100", "H100-80GB"),
        ("A100", "A100-80GB"),
        ("A100 40GB", "A100-40GB"),
        ("a100-80gb", "A100-80GB"),
        ("H200", "H200-141GB"),
        ("B200", "B200-180GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),  # as torch and nvidia-smi name it
        ("L4", "L4"),
        ("L40S", "L40S"),
    ],
)
def test_resolve_gpu_takes_keys_aliases_and_device_names(spec, key):
    assert cost.resolve_gpu(spec, GPU_TABLE) == GPU_TABLE[key]


def test_resolve_gpu_refuses_unknown_names_with_the_known_ones():
    with pytest.raises(ValueError, match=r"gpu 'T4': not a GPU of the price table; known: .*H100-80GB.*NAME@TFLOPS"):
        cost.resolve_gpu("T4", GPU_TABLE)
    for bad in ("T4@", "T4@fast", "T4@-65", "@65"):
        with pytest.raises(ValueError, match="expected NAME@TFLOPS"):
            cost.resolve_gpu(bad, GPU_TABLE)
    with pytest.raises(ValueError, match="H100-80GB is in the price table"):
        cost.resolve_gpu("H100@2000", GPU_TABLE)
    assert cost.resolve_gpu("T4@65", GPU_TABLE) == cost.GpuInfo("T4", None, 65.0, None)


def test_the_notebooks_example_gpu_prices_the_plan_for_that_gpu():
    """The notebook's `gpu` parameter documents an example ("H100"); it must name a GPU to price for."""
    cells = ["".join(c["source"]) for c in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]]
    parameters = next(c for c in cells if "\ngpu: str = " in c)
    example = re.search(r'^gpu: str = .*e\.g\. "([^"]+)"', parameters, re.M).group(1)
    table = cost.load_gpu_table(None)
    est = cost.estimate_cost(3_600_000, Throughput(1000.0, 0.5, 5), "A100-80GB", table, price_for=example)
    key = cost.resolve_gpu(example, table).name
    first, measured = est.rows[0], next(r for r in est.rows if r.gpu == "A100-80GB")
    assert est.price_for == key and first.gpu == key and [r.gpu for r in est.rows].count(key) == 1
    assert measured.basis == "measured" and measured.hours == pytest.approx(1.0)
    ratio = table["A100-80GB"].bf16_tflops / table[key].bf16_tflops
    assert first.hours == pytest.approx(ratio) and first.usd == pytest.approx(ratio * table[key].usd_per_hour)
    assert cost.format_estimate(est).splitlines()[1] == f"priced for: {key} (the first row)"


def test_priced_for_a_gpu_on_a_cpu_says_why_there_is_no_time():
    est = cost.estimate_cost(7200, Throughput(2.0, 1.0, 5), None, GPU_TABLE, price_for="H100")
    assert [r.gpu for r in est.rows] == ["H100-80GB", cost.CPU_ROW]
    assert est.rows[0].hours is None and est.rows[0].usd is None and "CPU measurement" in est.rows[0].basis
    assert est.rows[1].hours == pytest.approx(1.0) and "this machine (CPU)" in cost.format_estimate(est)


def test_an_unknown_gpu_given_with_its_tflops_is_scaled_by_them_and_labelled():
    est = cost.estimate_cost(3_600_000, Throughput(1000.0, 0.5, 5), "L4", GPU_TABLE, price_for="RTX-6000-Ada@242")
    first = est.rows[0]
    assert first.gpu == "RTX-6000-Ada" and first.hours == pytest.approx(121 / 242)
    assert first.usd is None and first.usd_per_hour is None
    assert first.basis == "scaled from L4 by spec TFLOPs (given: 242); not in the price table, so no price"
    assert {r.gpu for r in est.rows[1:]} == set(GPU_TABLE)


def test_default_table_has_the_spec_tflops():
    assert {k: g.bf16_tflops for k, g in GPU_TABLE.items()} == {
        "B200-180GB": 2250.0,
        "H200-141GB": 989.0,
        "H100-80GB": 989.0,
        "A100-80GB": 312.0,
        "A100-40GB": 312.0,
        "L40S": 362.0,
        "A10G": 70.0,
        "L4": 121.0,
    }
    assert all(g.usd_per_hour > 0 and g.name == k for k, g in GPU_TABLE.items())


def test_yaml_table_merges_over_defaults(tmp_path):
    path = tmp_path / "gpus.yaml"
    path.write_text("A100-80GB: {usd_per_hour: 1.5}\nRTX-6000: {usd_per_hour: 0.7, bf16_tflops: 91, memory_gb: 48}\n")
    table = cost.load_gpu_table(path)
    assert table["A100-80GB"].usd_per_hour == 1.5 and table["A100-80GB"].bf16_tflops == 312.0
    assert table["RTX-6000"] == cost.GpuInfo("RTX-6000", 0.7, 91.0, 48.0)
    assert table["L4"] == GPU_TABLE["L4"] and GPU_TABLE["A100-80GB"].usd_per_hour != 1.5  # defaults untouched


def test_yaml_table_rejects_unknown_fields_and_incomplete_new_gpus(tmp_path):
    path = tmp_path / "gpus.yaml"
    path.write_text("L4:\n  usd_per_hr: 0.5\n")
    with pytest.raises(ValueError, match=r"gpus.yaml: L4: unknown fields \['usd_per_hr'\]"):
        cost.load_gpu_table(path)
    path.write_text("T4:\n  usd_per_hour: 0.3\n")
    with pytest.raises(ValueError, match="new GPU.*missing"):
        cost.load_gpu_table(path)
    path.write_text("L4:\n  usd_per_hour: -1\n")
    with pytest.raises(ValueError, match="positive number"):
        cost.load_gpu_table(path)


def test_price_overrides_from_flags():
    table = cost.parse_price_overrides(["A100-80GB=1.50", "L4=0.5", "H100=2.5"])
    assert table["A100-80GB"].usd_per_hour == 1.5 and table["L4"].usd_per_hour == 0.5
    assert table["H100-80GB"].usd_per_hour == 2.5  # an alias names the same row
    table = cost.parse_price_overrides(["A100-80GB=1.50"])
    assert table["H100-80GB"] == GPU_TABLE["H100-80GB"]
    for bad in ["A100-80GB", "A100-80GB=cheap", "A100-80GB=0", "T4=0.3"]:
        with pytest.raises(ValueError, match="price override"):
            cost.parse_price_overrides([bad])


def test_throughput_times_only_the_measured_steps():
    calls = []

    def step():
        calls.append(1)
        time.sleep(0.3 if len(calls) <= 2 else 0.02)  # slow warm-up steps would show if they were timed
        return 100

    t = cost.measure_training_throughput(step, warmup=2, steps=5)
    assert len(calls) == 7 and t.steps == 5
    assert 0.015 < t.seconds_per_step < 0.1  # sleep takes at least its time; loose above for busy machines
    assert 1000 < t.tokens_per_s < 100 / 0.015
    with pytest.raises(ValueError, match="supervised tokens"):
        cost.measure_training_throughput(lambda: 0, warmup=0, steps=1)


def test_estimate_on_a_measured_gpu_scales_the_others_by_tflops():
    table = cost.load_gpu_table(None)
    est = cost.estimate_cost(3_600_000, Throughput(1000.0, 0.5, 5), "A100-80GB", table, scratch_tokens=7_200_000)
    assert est.hours == pytest.approx(1.0) and est.scratch_hours == pytest.approx(2.0)
    rows = {r.gpu: r for r in est.rows}
    assert est.rows[0].gpu == "A100-80GB" and set(rows) == set(table)
    a100 = rows["A100-80GB"]
    assert a100.basis == "measured" and a100.hours == pytest.approx(1.0) and a100.usd == pytest.approx(1.79)
    assert a100.scratch_usd == pytest.approx(2 * 1.79)
    h100 = rows["H100-80GB"]
    assert h100.basis == "scaled from A100-80GB by spec TFLOPs"
    assert h100.hours == pytest.approx(312 / 989) and h100.usd == pytest.approx(312 / 989 * 2.99)
    assert rows["A100-40GB"].hours == pytest.approx(1.0) and rows["A100-40GB"].usd == pytest.approx(1.29)
    assert rows["L4"].scratch_hours == pytest.approx(2 * 312 / 121)
    data = est.to_json()
    assert data["rows"][0]["gpu"] == "A100-80GB" and data["measured_on"] == "A100-80GB"


def test_estimate_on_cpu_has_only_this_machine_without_price():
    est = cost.estimate_cost(7200, Throughput(2.0, 1.0, 5), None, GPU_TABLE)
    assert len(est.rows) == 1 and est.rows[0].gpu == cost.CPU_ROW
    assert est.rows[0].hours == pytest.approx(1.0) and est.rows[0].usd is None and est.rows[0].scratch_hours is None
    assert "measure on a GPU for GPU estimates" in est.notes
    text = cost.format_estimate(est)
    assert "this machine" in text and "1 h 00 min" in text and "measure on a GPU" in text and "from scratch" not in text
    with pytest.raises(ValueError, match="not in the GPU table"):
        cost.estimate_cost(1, Throughput(2.0, 1.0, 5), "T4", GPU_TABLE)


def test_format_estimate_shows_times_prices_and_costs():
    est = cost.estimate_cost(3_600_000, Throughput(1000.0, 0.5, 5), "A100-80GB", GPU_TABLE, scratch_tokens=7_200_000)
    text = cost.format_estimate(est)
    assert "3,600,000 tokens" in text and "1,000 tokens/s" in text and "from scratch: time" in text
    a100 = next(line for line in text.splitlines() if line.startswith("A100-80GB"))
    assert "1.79" in a100 and "1 h 00 min" in a100 and "$1.79" in a100 and "2 h 00 min" in a100 and "$3.58" in a100
    h100 = next(line for line in text.splitlines() if line.startswith("H100-80GB"))
    assert "19 min" in h100 and "$0.94" in h100 and "scaled from A100-80GB" in h100


def test_format_duration():
    hours = (None, 0.001, 0.5, 1.0, 25.51)
    assert [cost.format_duration(h) for h in hours] == ["-", "<1 min", "30 min", "1 h 00 min", "25 h 31 min"]


def test_actual_cost():
    spent = cost.actual_cost(7200, "A100-80GB", GPU_TABLE)
    assert spent == {"gpu": "A100-80GB", "hours": 2.0, "usd": pytest.approx(3.58)}
    assert cost.actual_cost(1800, None, GPU_TABLE) == {"gpu": None, "hours": 0.5, "usd": None}
    assert cost.actual_cost(1800, "T4", GPU_TABLE)["usd"] is None


def test_on_a_cpu_counted_flops_give_every_gpu_a_computed_time_labelled_with_its_mfu():
    per_token = 2e9  # FLOPs per supervised token
    est = cost.estimate_cost(3_600_000, Throughput(2.0, 1.0, 5), None, GPU_TABLE, scratch_tokens=7_200_000,
                             price_for="H100", flops_per_token=per_token, mfu=0.25)  # fmt: skip
    assert [r.gpu for r in est.rows][:2] == ["H100-80GB", cost.CPU_ROW]
    assert {r.gpu for r in est.rows[2:]} == set(GPU_TABLE) - {"H100-80GB"}
    for row in (r for r in est.rows if r.gpu != cost.CPU_ROW):
        info = GPU_TABLE[row.gpu]
        hours = 3_600_000 * per_token / (info.bf16_tflops * 1e12 * 0.25) / 3600
        assert row.hours == pytest.approx(hours) and row.usd == pytest.approx(hours * info.usd_per_hour)
        assert row.scratch_hours == pytest.approx(2 * hours) and "assumed MFU of 25%" in row.basis
    assert est.rows[1].hours == pytest.approx(3_600_000 / 2.0 / 3600) and est.rows[1].usd is None
    text = cost.format_estimate(est)
    assert "computed rows: counted FLOPs at an assumed MFU of 25%" in text and "measure on a GPU" not in text
    # a measurement that scales (a GPU of the table) is not replaced by a computation
    measured = cost.estimate_cost(3_600_000, Throughput(1000.0, 0.5, 5), "L4", GPU_TABLE, flops_per_token=per_token)
    assert all("computed" not in r.basis for r in measured.rows)
