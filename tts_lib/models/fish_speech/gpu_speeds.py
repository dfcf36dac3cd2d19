"""Fish Speech's figures for `python -m tts_lib gpu-check`: the codec's encoding speed and KV-cached generation
speed, on random weights of S1-mini's shape (the tiny shapes with --smoke). Weights do not change the speed."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tts_lib.models.fish_speech.codec import FishCodec, FishCodecConfig
from tts_lib.models.fish_speech.config import S1_MINI_CONFIG, FishSpeechConfig
from tts_lib.models.fish_speech.generate import generate
from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint

Timer = Callable[[torch.device, Callable[[], object], int], float]  # gpu_check.timed: seconds per call


def codec_speed(
    timed: Timer, config: FishCodecConfig, device: torch.device, seconds_of_audio: float, repeats: int
) -> dict:
    """Seconds to encode an hour of audio with a random codec of this shape."""
    codec = FishCodec(config).to(device).eval()
    waves = [torch.randn(int(seconds_of_audio * codec.sample_rate), device=device) * 0.1 for _ in range(4)]
    with torch.no_grad():
        seconds = timed(device, lambda: codec.encode_batch(waves), repeats)
    return {"seconds_per_hour_of_audio": seconds / (4 * seconds_of_audio / 3600)}


def generation_speed(
    timed: Timer, config: FishSpeechConfig, device: torch.device, dtype: torch.dtype, frames: int
) -> dict:
    """Codec frames per second of KV-cached generation from a short prompt."""
    begin = config.vocab_size - config.codebook_size
    model = FishSpeechLM(config, semantic_begin_id=begin).to(device=device, dtype=dtype).eval()
    prompt = torch.zeros(1 + config.num_codebooks, 16, dtype=torch.long, device=device)
    prompt[0] = torch.arange(16, device=device) % max(begin - 1, 1)
    options = dict(max_new_tokens=frames, im_end_id=begin - 1, semantic_begin_id=begin,
                   semantic_end_id=begin + config.codebook_size - 1, seed=0, residual_codebook_size=None)  # fmt: skip
    made = []
    seconds = timed(device, lambda: made.append(generate(model, prompt, **options)), 1)
    return {"frames_per_s": made[-1].shape[1] / seconds, "frames": made[-1].shape[1]}


def gpu_speeds(device: torch.device, dtype: torch.dtype, smoke: bool, work, timed: Timer) -> dict[str, dict]:
    """{"codec": ..., "generation": ...} at S1-mini's shapes (smoke: the tiny model's, on the CPU), each call
    timed with gpu-check's `timed` (after a warm-up call, synchronised)."""
    if smoke:
        config = FishSpeechConfig.from_file(make_tiny_checkpoint(work / "fish-tiny") / "config.json")
        codec = FishCodecConfig.tiny()
    else:
        config, codec = FishSpeechConfig(**S1_MINI_CONFIG), FishCodecConfig()
    return {
        "codec": codec_speed(timed, codec, device, 1.0 if smoke else 30.0, 1 if smoke else 2),
        "generation": generation_speed(timed, config, device, dtype, 8 if smoke else 200),
    }
