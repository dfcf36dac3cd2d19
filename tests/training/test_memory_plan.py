"""The memory plan on a small model: what it traces must match real tensors and torch's MemTracker, and
move the way the settings should move it. S1-mini itself is traced only in the slow test of the goals."""

import dataclasses

import pytest
import torch
from torch import nn
from torch._subclasses import FakeTensorMode

from tts_lib.models.fish_speech import loss as loss_module
from tts_lib.models.fish_speech.config import FishSpeechConfig
from tts_lib.models.fish_speech.loss import loss_parts
from tts_lib.models.fish_speech.planning import FishPlanningShape, s1_mini_shape
from tts_lib.training import memory_plan as mp

# S1-mini's layout at small widths; the vocabulary is large next to dim, as S1-mini's is.
SMALL = dict(
    vocab_size=8192, n_layer=4, n_head=4, n_local_heads=2, dim=64, head_dim=16, intermediate_size=192,
    max_seq_len=1024, tie_word_embeddings=False, attention_qk_norm=True, codebook_size=64, num_codebooks=4,
    scale_codebook_embeddings=True, n_fast_layer=1, fast_dim=64, fast_n_head=4, fast_n_local_heads=2,
    fast_head_dim=16, fast_intermediate_size=192, fast_attention_qk_norm=False,
)  # fmt: skip


def small(**changes) -> FishPlanningShape:
    return FishPlanningShape(FishSpeechConfig(**{**SMALL, **changes}))


def fake() -> FakeTensorMode:
    return FakeTensorMode(allow_non_fake_inputs=True)


@pytest.fixture(autouse=True)
def fresh_plans(monkeypatch):
    monkeypatch.setattr(mp, "_plans", {})


def gib(plan: mp.MemoryPlan) -> dict[str, float]:
    return {c: getattr(plan, c + "_gib") for c in mp.CATEGORIES}


def test_the_parts_add_up_to_the_peak():
    plan = mp.plan_memory("full", 512, shape=small())
    assert sum(gib(plan).values()) == pytest.approx(plan.peak_gib, rel=1e-9)
    assert plan.peak_during in mp.LiveMemory.PHASE_CATEGORY


def test_the_plan_grows_with_max_tokens():
    plans = [mp.plan_memory("full", n, shape=small()) for n in (256, 512, 1024)]
    peaks = [p.peak_gib for p in plans]
    assert peaks[0] < peaks[1] < peaks[2]
    # what the step holds whatever the batch is the same; what the batch costs roughly doubles with it
    for part in ("weights_gib", "optimizer_gib"):
        assert len({getattr(p, part) for p in plans}) == 1
    moving = [p.peak_gib - p.weights_gib - p.optimizer_gib - p.ema_gib for p in plans]
    assert moving[1] / moving[0] == pytest.approx(2, rel=0.25) and moving[2] / moving[1] == pytest.approx(2, rel=0.25)


def test_gradient_checkpointing_lowers_the_activations():
    for mode in ("full", "quick_lora"):
        off, on = (mp.plan_memory(mode, 1024, checkpointing, shape=small()) for checkpointing in (False, True))
        assert on.activations_gib < 0.7 * off.activations_gib, mode
        assert on.peak_gib < off.peak_gib, mode


def test_quick_lora_keeps_a_bf16_base_and_small_trainable_state():
    full, lora = (mp.plan_memory(mode, 512, shape=small()) for mode in ("full", "quick_lora"))
    assert lora.peak_gib < full.peak_gib
    # the frozen base is bf16 (half of fp32, plus the small fp32 adapter); AdamW and EMA only see the adapter
    assert lora.weights_gib == pytest.approx(full.weights_gib / 2, rel=0.1)
    assert lora.optimizer_gib < full.optimizer_gib / 20 and lora.ema_gib < full.ema_gib / 20
    # under fp32 the loop keeps the base in fp32 too
    assert mp.plan_memory("quick_lora", 512, precision="fp32", shape=small()).weights_gib > lora.weights_gib * 1.8


def test_two_phase_plans_for_its_larger_phase():
    two = mp.plan_memory("two_phase", 512, shape=small())
    full = mp.plan_memory("full", 512, shape=small())
    assert two.mode == "two_phase" and dataclasses.replace(two, mode="full") == full


@pytest.mark.parametrize(("mode", "checkpointing"), [("full", False), ("full", True), ("quick_lora", False)])
def test_fake_tensors_trace_what_real_tensors_hold(mode, checkpointing):
    config = small()
    batch = config.batch(512)
    traces = []
    for fake_mode in (fake(), None):
        torch.manual_seed(0)
        model = mp.build_model(config, mode, "bf16", checkpointing, fake_mode)
        traces.append(mp.trace_step(model, batch, "bf16", config, rounding=1))
    faked, real = traces
    assert faked.peak == real.peak > 0
    assert faked.at_peak == real.at_peak and faked.peak_phase == real.peak_phase


def test_live_memory_counts_what_torch_memtracker_counts():
    from torch.distributed._tools.mem_tracker import MemTracker

    config = small()
    batch = config.batch(512)

    def forward_backward(model):
        with mp.autocast_for("bf16")():
            loss = loss_parts(model, batch).loss()
        loss.backward()

    peaks = []
    for use_memtracker in (True, False):
        torch.manual_seed(0)
        model = mp.build_model(config, "full", "bf16", False, None)  # MemTracker cannot hook frozen weights
        if use_memtracker:
            tracker = MemTracker()
            tracker.track_external(model)
            with tracker:
                forward_backward(model)
            peaks.append(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])
        else:
            live = mp.LiveMemory(config.logits_width, rounding=1)  # MemTracker rounds CUDA tensors only
            live.hold([*model.parameters(), *model.buffers()], "weights")
            hooks = live.watch_gradients(model)
            with live:
                forward_backward(model)
            for hook in hooks:
                hook.remove()
            peaks.append(live.peak)
    assert peaks[0] == peaks[1]


def test_lora_dropout_is_planned_as_cuda_runs_it():
    model = mp.build_model(small(), "quick_lora", "bf16", False, fake())
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert any(isinstance(m, mp.FusedDropout) for m in model.modules())
    x = torch.ones(1000, 100, requires_grad=True)
    with mp.LiveMemory(vocab_size=7, rounding=1) as live:
        y = mp.FusedDropout(0.5).train()(x)
    # what backward keeps is a bool mask, a byte an element, beside the fp32 output
    assert live.live["activations"] == 1000 * 100 * (4 + 1)
    assert set(y.unique().tolist()) == {0.0, 2.0} and 0.4 < (y == 0).float().mean() < 0.6


def test_chunked_cross_entropy_keeps_the_logits_small(monkeypatch):
    config = small(n_layer=2)
    plans = {}
    for rows in (32, 10**6):  # 32 rows of logits at a time, or every row at once
        monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", rows * config.logits_width)
        monkeypatch.setattr(mp, "_plans", {})
        plans[rows] = mp.plan_memory("full", 1024, shape=config)
    chunked, whole = plans[32], plans[10**6]
    # 1024 rows of fp32 logits are 32 MiB; a chunk is 1 MiB, and its copies (fp32, log-softmax, gradient) a few
    assert whole.logits_gib * 2**10 > 32 and chunked.logits_gib * 2**10 < 8
    assert chunked.peak_gib < whole.peak_gib - 24 / 2**10


def test_max_tokens_for_gives_the_largest_budget_that_fits():
    config = small()
    free = mp.plan_memory("full", 2048, shape=config).peak_gib / 0.9 + 0.001  # room for 2048 with a 10% margin
    tokens = mp.max_tokens_for("full", free, margin=0.1, shape=config)
    assert tokens % mp.TOKEN_STEP == 0 and tokens >= 2048
    assert mp.plan_memory("full", tokens, shape=config).peak_gib <= free * 0.9
    assert mp.plan_memory("full", tokens + mp.TOKEN_STEP, shape=config).peak_gib > free * 0.9


@pytest.mark.parametrize("beyond_1024", [0.002, 0.05])  # GiB per token: flatter, then steeper than below
def test_max_tokens_for_finds_the_budget_where_the_peak_bends(monkeypatch, beyond_1024):
    def peak(tokens: int) -> float:
        return 10 + 0.01 * min(tokens, 1024) + beyond_1024 * max(tokens - 1024, 0)

    def plan(mode, tokens, *args):
        zeros = dict.fromkeys((c + "_gib" for c in mp.CATEGORIES), 0.0)
        return mp.MemoryPlan(mode, tokens, False, "bf16", **zeros, peak_gib=peak(tokens), peak_during="backward")

    monkeypatch.setattr(mp, "plan_memory", plan)
    tokens = mp.max_tokens_for("full", 30 / 0.9, margin=0.1)
    assert peak(tokens) <= 30 < peak(tokens + mp.TOKEN_STEP)


def test_max_tokens_for_refuses_a_gpu_that_is_too_small():
    config = small()
    with pytest.raises(ValueError, match=r"full needs .* GiB at max_tokens 256 .*larger GPU or turn on gradient"):
        mp.max_tokens_for("full", 0.01, shape=config)


def test_bad_settings_say_what_is_expected():
    with pytest.raises(ValueError, match="mode must be one of quick_lora, full, two_phase, found 'lora'"):
        mp.plan_memory("lora", 4096)
    with pytest.raises(ValueError, match="precision must be one of bf16, fp16, fp32, found 'int8'"):
        mp.plan_memory("full", 4096, precision="int8")
    with pytest.raises(ValueError, match="max_tokens must be a whole number >= 1, found 0"):
        mp.plan_memory("full", 0)


def test_the_command_prints_the_breakdown_and_ends_with_the_peak(monkeypatch, capsys):
    monkeypatch.setattr(mp, "reference_shape", lambda family: small())  # the command plans S1-mini; small is fast
    from tts_lib.cli import main

    assert main(["memory-plan", "--mode", "quick_lora", "--max-tokens", "512", "--gradient-checkpointing"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    plan = mp.plan_memory("quick_lora", 512, True, shape=small())
    assert out[-1] == f"peak_gib={plan.peak_gib:.2f}"
    for category in mp.CATEGORIES:
        assert any(line.split()[:2] == [category, f"{getattr(plan, category + '_gib'):.2f}"] for line in out)
    assert "gradient checkpointing on" in out[0] and "(traced, OpenAudio S1-mini shape)" in out[0]


@pytest.mark.slow
def test_s1_mini_meets_the_memory_goals():
    """Goals at max_tokens 4096, without gradient checkpointing: quick_lora <= 20 GiB (a 24 GB L4), full <= 60 GiB
    (an 80 GB A100); a larger budget needs more."""
    lora = mp.plan_memory("quick_lora", 4096)
    full = mp.plan_memory("full", 4096)
    assert lora.peak_gib <= 20 and full.peak_gib <= 60
    assert mp.plan_memory("full", 8192).peak_gib > full.peak_gib


def test_adapters_under_autocast_take_their_inputs_uncast_which_lowers_the_peak():
    """peft casts each adapted layer's input to the adapter's fp32; under autocast that copy is wasted memory
    at the forward's peak. S1-mini's widths with few layers, where that peak shows."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    config = FishPlanningShape(dataclasses.replace(s1_mini_shape().config, n_layer=4, n_fast_layer=2))

    def peak(peft_default: bool) -> float:
        model = mp.build_model(config, "quick_lora", "bf16", False, fake())
        tuners = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        assert tuners and all(not m.cast_input_dtype_enabled for m in tuners)  # the loop's rule, traced
        for m in tuners:
            m.cast_input_dtype_enabled = peft_default
        return mp.trace_step(model, config.batch(2048), "bf16", config).peak

    assert peak(False) < peak(True) * 0.97


def test_the_command_plans_a_folders_own_model_at_its_familys_default_max_tokens(tmp_path, capsys):
    from tts_lib.cli import main
    from tts_lib.models import load_family, make_tiny_checkpoint

    folder = make_tiny_checkpoint(tmp_path / "tiny-voxcpm", family="voxcpm")
    assert main(["memory-plan", "--mode", "full", "--base-model", str(folder)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    plan = mp.plan_memory("full", 1024, shape=load_family(folder).planning_shape())  # VoxCPM2's default: 1024
    assert "max_tokens 1024" in out[0] and "tiny-voxcpm shape" in out[0] and out[-1] == f"peak_gib={plan.peak_gib:.2f}"
