import math

import pytest
import torch

from tts_lib.models import ModuleRoles
from tts_lib.models.fish_speech.config import FishSpeechConfig
from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.training.optim import OptimConfig, clip_gradients, layer_index, make_optimizer, param_groups, param_kind

TINY = dict(
    vocab_size=1024, n_layer=2, n_head=4, n_local_heads=2, dim=64, head_dim=16, intermediate_size=128,
    codebook_size=32, num_codebooks=4, n_fast_layer=1, max_seq_len=64, tie_word_embeddings=False,
    attention_qk_norm=True,
)  # fmt: skip


def tiny() -> FishSpeechLM:
    torch.manual_seed(0)
    return FishSpeechLM(FishSpeechConfig(**TINY), semantic_begin_id=944)


def group_of(groups: list[dict]) -> dict[int, dict]:
    return {id(p): g for g in groups for p in g["params"]}


def check_coverage(model: torch.nn.Module, groups: list[dict]) -> None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    assert all(g["params"] for g in groups)
    assert len({g["name"] for g in groups}) == len(groups)


def test_name_parsing_follows_the_families_roles():
    roles = FishSpeechLM.module_roles
    assert param_kind("base_model.model.layers.0.attention.wqkv.lora_A.default.weight", roles) == "adapter"
    assert param_kind("layers.0.attention.wqkv.lora_magnitude_vector.default.weight", roles) == "adapter"
    assert param_kind("codebook_embeddings.weight", roles) == "embeddings"
    assert param_kind("fast_output.weight", roles) == "heads"
    assert param_kind("layers.1.attention.wo.weight", roles) == "other"
    assert layer_index("base_model.model.layers.12.ffn_norm.weight", roles) == 12
    assert layer_index("fast_layers.0.attention.wqkv.weight", roles) is None
    # another family's names: its own roles decide, nothing of Fish Speech's
    other = ModuleRoles(embeddings=frozenset({"tok_emb"}), heads=frozenset({"lm_head"}), layer_pattern=r"blocks\.(\d+)")
    assert param_kind("tok_emb.weight", other) == "embeddings"
    assert param_kind("codebook_embeddings.weight", other) == "other"
    assert param_kind("lm_head.weight", other) == "heads" and layer_index("blocks.3.attn.weight", other) == 3
    assert param_kind("output.weight", ModuleRoles()) == "other" and layer_index("layers.1.x", ModuleRoles()) is None


def test_default_groups_cover_everything_and_skip_decay_on_norms():
    model = tiny()
    cfg = OptimConfig(weight_decay=0.1)
    groups = param_groups(model, cfg)
    check_coverage(model, groups)
    assert {g["name"] for g in groups} == {
        "embeddings/decay", "heads/decay", "other/decay", "other/no_decay",
    }  # fmt: skip
    by_param = group_of(groups)
    for name, p in model.named_parameters():
        g = by_param[id(p)]
        no_decay = "norm" in name or p.ndim < 2
        assert g["weight_decay"] == (0.0 if no_decay else 0.1), name
        assert g["lr"] == cfg.lr


def test_embedding_and_head_overrides():
    model = tiny()
    cfg = OptimConfig(lr=1e-4, embedding_lr=1e-5, embedding_weight_decay=0.0, weight_decay=0.01, head_lr=2e-4)
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    assert groups["embeddings/decay"]["lr"] == 1e-5 and groups["embeddings/decay"]["weight_decay"] == 0.0
    assert len(groups["embeddings/decay"]["params"]) == 3
    assert groups["heads/decay"]["lr"] == 2e-4 and groups["heads/decay"]["weight_decay"] == 0.01
    assert groups["other/decay"]["lr"] == 1e-4


def test_layer_lr_decay():
    model = tiny()
    cfg = OptimConfig(lr=1.0, layer_lr_decay=0.5)
    groups = param_groups(model, cfg)
    check_coverage(model, groups)
    by_param = group_of(groups)
    named = dict(model.named_parameters())
    assert by_param[id(named["layers.0.attention.wqkv.weight"])]["lr"] == 0.5  # 0.5 ** (2 - 1 - 0)
    assert by_param[id(named["layers.1.attention.wqkv.weight"])]["lr"] == 1.0  # top slow layer
    assert by_param[id(named["layers.0.attention_norm.weight"])]["name"] == "layer0/no_decay"
    assert by_param[id(named["fast_layers.0.attention.wqkv.weight"])]["lr"] == 1.0  # fast layers count as the top
    assert by_param[id(named["embeddings.weight"])]["lr"] == 1.0


def test_frozen_parameters_are_left_out():
    model = tiny()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fast_"))
    groups = param_groups(model, OptimConfig())
    check_coverage(model, groups)
    assert {g["name"] for g in groups} == {"embeddings/decay", "heads/decay", "other/decay", "other/no_decay"}


def test_lora_parameters_go_to_the_adapter_group():
    peft = pytest.importorskip("peft")
    model = tiny()
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["wqkv", "wo"])
    wrapped = peft.get_peft_model(model, lora)  # freezes everything but the adapters
    groups = param_groups(wrapped, OptimConfig(weight_decay=0.1))
    check_coverage(wrapped, groups)
    assert [g["name"] for g in groups] == ["adapter/decay"]
    assert len(groups[0]["params"]) == 2 * 2 * (TINY["n_layer"] + TINY["n_fast_layer"])  # A and B, wqkv and wo


def test_make_optimizer_steps_and_keeps_group_names():
    model = tiny()
    opt = make_optimizer(model, OptimConfig(), device_type="cpu")
    assert isinstance(opt, torch.optim.AdamW) and not opt.defaults["fused"]
    assert all("name" in g for g in opt.param_groups)
    before = model.output.weight.detach().clone()
    logits, _ = model(torch.zeros(1, 5, 8, dtype=torch.long))
    logits.float().pow(2).mean().backward()
    opt.step()
    assert not torch.equal(before, model.output.weight)
    assert any(g["name"] == "other/no_decay" for g in opt.state_dict()["param_groups"])


def test_clip_gradients_returns_norm_and_clips():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(4))
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    assert clip_gradients([a, b], max_norm=1.0) == pytest.approx(5.0)
    total = torch.cat([a.grad, b.grad]).norm().item()
    assert total == pytest.approx(1.0, rel=1e-4)
    assert clip_gradients([a, b], max_norm=None) == pytest.approx(1.0, rel=1e-4)  # measures only


def test_clip_gradients_reports_non_finite():
    a = torch.nn.Parameter(torch.zeros(2))
    a.grad = torch.tensor([float("inf"), 1.0])
    assert math.isinf(clip_gradients([a], 1.0))
    a.grad = torch.tensor([float("nan"), 1.0])
    assert math.isnan(clip_gradients([a], 1.0))
