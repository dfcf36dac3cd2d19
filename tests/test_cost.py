"""Time and cost estimates: GPU name mapping, price table overrides, estimate arithmetic, formatting."""

import time

import pytest

from tts_lib import cost
from tts_lib.cost import GPU_TABLE, Throughput


@pytest.mark.parametrize(
    "name, memory_gb, key",
    [
        ("NVIDIA A100-SXM4-80GB", 79.2, "A100-80GB"),
        ("NVIDIA A100-SXM4-40GB", 39.4, "A100-40GB"),
        ("NVIDIA A100-PCIE-40GB", 39.4, "A100-40GB"),
        ("NVIDIA A100 80GB PCIe", 79.2, "A100-80GB"),
        ("NVIDIA A100-SXM4", 79.2, "A100-80GB"),
        ("NVIDIA H100 80GB HBM3", 79.1, "H100-80GB"),
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


def test_default_table_has_the_spec_tflops():
    assert {k: g.bf16_tflops for k, g in GPU_TABLE.items()} == {
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
    table = cost.parse_price_overrides(["A100-80GB=1.50", "L4=0.5"])
    assert table["A100-80GB"].usd_per_hour == 1.5 and table["L4"].usd_per_hour == 0.5
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
