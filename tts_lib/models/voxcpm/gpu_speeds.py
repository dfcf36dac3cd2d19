"""VoxCPM2's figures for `python -m tts_lib gpu-check --family voxcpm`: the audio VAE's encoding speed (what the
features cache spends once per clip) and KV-cached generation speed, on random weights of the published size
(tts_lib/models/voxcpm/reference.py; the tiny shapes with --smoke). Weights do not change the speed."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import torch

from tts_lib.models.voxcpm.config import VoxCPM2Config
from tts_lib.models.voxcpm.generate import generate
from tts_lib.models.voxcpm.model import VoxCPM2Model
from tts_lib.models.voxcpm.reference import REFERENCE_CONFIG
from tts_lib.models.voxcpm.tiny import make_tiny_checkpoint
from tts_lib.models.voxcpm.vae import AudioVAE, AudioVAEConfig

Timer = Callable[[torch.device, Callable[[], object], int], float]  # gpu_check.timed: seconds per call


def vae_speed(timed: Timer, config: AudioVAEConfig, device: torch.device, seconds_of_audio: float, repeats: int):
    """Seconds to encode an hour of 16 kHz audio with a random VAE of this shape (float32, as the cache runs it)."""
    vae = AudioVAE(config).to(device).eval()
    audio = torch.randn(4, int(seconds_of_audio * config.sample_rate), device=device) * 0.1
    with torch.no_grad():
        seconds = timed(device, lambda: vae.encode(audio, config.sample_rate), repeats)
    return {"seconds_per_hour_of_audio": seconds / (4 * seconds_of_audio / 3600)}


def generation_speed(timed: Timer, config: VoxCPM2Config, device: torch.device, dtype: torch.dtype, patches: int):
    """Latent patches per second of KV-cached generation (forced to `patches`), and seconds of audio per second."""
    model = VoxCPM2Model(config).to(device=device, dtype=dtype).eval()
    made = []

    def run() -> None:
        made.append(generate(model, list(range(3, 40)), max_patches=patches, min_patches=patches))

    seconds = timed(device, run, 1)
    frames = made[-1].shape[1]  # latent frames, patch_size per patch
    vae = AudioVAEConfig.from_dict(config.audio_vae_config)
    audio_seconds = frames * math.prod(vae.encoder_rates) / vae.sample_rate
    return {"patches_per_s": frames / config.patch_size / seconds, "seconds_of_audio_per_s": audio_seconds / seconds}


def gpu_speeds(device: torch.device, dtype: torch.dtype, smoke: bool, work, timed: Timer) -> dict[str, dict]:
    """{"vae": ..., "generation": ...} at VoxCPM2's published shapes (smoke: the tiny model's, on the CPU), each
    call timed with gpu-check's `timed` (after a warm-up call, synchronised)."""
    if smoke:
        raw = json.loads((make_tiny_checkpoint(work / "voxcpm-speeds") / "config.json").read_text())
    else:
        raw = REFERENCE_CONFIG
    config = VoxCPM2Config.from_dict(json.loads(json.dumps(raw)))
    vae = AudioVAEConfig.from_dict(config.audio_vae_config)
    return {
        "vae": vae_speed(timed, vae, device, 1.0 if smoke else 30.0, 1 if smoke else 2),
        "generation": generation_speed(timed, config, device, dtype, 4 if smoke else 100),
    }
