"""FLOPs counted by torch's FlopCounterMode on the fake-tensor step, against the transformer arithmetic."""

import pytest

from tts_lib.models.fish_speech.config import FishSpeechConfig
from tts_lib.models.fish_speech.planning import ITEM_TOKENS, FishPlanningShape
from tts_lib.training import flops

SMALL = FishSpeechConfig(
    vocab_size=8192, n_layer=2, n_head=4, n_local_heads=2, dim=64, head_dim=16, intermediate_size=192,
    max_seq_len=1024, tie_word_embeddings=False, attention_qk_norm=True, codebook_size=64, num_codebooks=4,
    n_fast_layer=1, fast_dim=64, fast_n_head=4, fast_n_local_heads=2, fast_head_dim=8, fast_intermediate_size=96,
)  # fmt: skip
TOKENS = 512  # two items of ITEM_TOKENS positions, every position a frame


def layer_weights(dim: int, heads: int, kv_heads: int, head_dim: int, hidden: int) -> int:
    return dim * (heads + 2 * kv_heads) * head_dim + heads * head_dim * dim + 3 * dim * hidden


def forward_flops(c: FishSpeechConfig, layers_only: bool = False) -> tuple[int, int]:
    """(multiply-adds x 2 of the matmuls of one forward, of its attention) over TOKENS positions."""
    frames, items = TOKENS, TOKENS // ITEM_TOKENS
    slow = c.n_layer * layer_weights(c.dim, c.n_head, c.n_local_heads, c.head_dim, c.intermediate_size)
    fast = c.n_fast_layer * layer_weights(
        c.fast_dim, c.fast_n_head, c.fast_n_local_heads, c.fast_head_dim, c.fast_intermediate_size
    )
    heads = 0 if layers_only else frames * (c.dim * c.vocab_size + c.num_codebooks * c.fast_dim * c.codebook_size)
    dense = 2 * (frames * slow + frames * c.num_codebooks * fast + heads)
    # q k^T and p v, the whole square (torch's convention): 4 x queries x keys x heads x head_dim
    attention = 4 * c.n_layer * items * ITEM_TOKENS**2 * c.n_head * c.head_dim
    attention += 4 * c.n_fast_layer * frames * c.num_codebooks**2 * c.fast_n_head * c.fast_head_dim
    return dense, attention


def test_a_full_step_counts_three_forwards_plus_the_recomputed_heads():
    counted, tokens = flops.count_step_flops("full", max_tokens=TOKENS, shape=FishPlanningShape(SMALL))
    dense, attention = forward_flops(SMALL)
    heads = dense - forward_flops(SMALL, layers_only=True)[0]
    # backward: the input and the weight gradients of every matmul (2x), attention 2.5x; the chunked
    # heads run their forward once more in backward
    assert counted == 3 * dense + heads + 3.5 * attention
    assert tokens == TOKENS * (1 + SMALL.num_codebooks)


def test_gradient_checkpointing_adds_one_forward_of_the_layers():
    plain, _ = flops.count_step_flops("full", max_tokens=TOKENS, shape=FishPlanningShape(SMALL))
    checkpointed, _ = flops.count_step_flops("full", True, max_tokens=TOKENS, shape=FishPlanningShape(SMALL))
    # torch stops recomputing a layer once backward has what it saved: the last matmul (w2) is not redone
    c = SMALL
    w2 = 2 * TOKENS * c.n_layer * c.intermediate_size * c.dim
    w2 += 2 * TOKENS * c.num_codebooks * c.n_fast_layer * c.fast_intermediate_size * c.fast_dim
    assert checkpointed - plain == sum(forward_flops(SMALL, layers_only=True)) - w2


def test_an_adapter_step_costs_less_than_a_full_one():
    full, _ = flops.count_step_flops("full", max_tokens=TOKENS, shape=FishPlanningShape(SMALL))
    lora, _ = flops.count_step_flops("quick_lora", max_tokens=TOKENS, shape=FishPlanningShape(SMALL))
    dense, attention = forward_flops(SMALL)
    # no weight gradients for the frozen base, but input gradients through it
    assert 2 * dense < lora < full


def test_two_phase_is_counted_per_phase():
    with pytest.raises(ValueError, match="two_phase runs a full phase, then a quick_lora one: count each"):
        flops.count_step_flops("two_phase", shape=FishPlanningShape(SMALL))


def test_estimate_hours_scales_with_tokens_speed_and_mfu(monkeypatch):
    # S1-mini's count takes seconds; the rule is the same for the reference shape
    monkeypatch.setattr(flops, "reference_shape", lambda: FishPlanningShape(SMALL))
    monkeypatch.setattr(flops, "_counts", {})
    per_token = flops.flops_per_token("full")
    hours = flops.estimate_hours(10**9, "full", gpu_bf16_tflops=100.0, mfu=0.5)
    assert hours * 3600 * 100e12 * 0.5 == pytest.approx(10**9 * per_token)
    assert flops.estimate_hours(10**9, "full", 100.0) == pytest.approx(hours * 0.5 / flops.ASSUMED_MFU)
    assert flops.estimate_hours(10**9, "quick_lora", 100.0, 0.5) < hours
    with pytest.raises(ValueError, match="0 < mfu <= 1, found 100.0 and 30"):
        flops.estimate_hours(10**9, "full", 100.0, mfu=30)
