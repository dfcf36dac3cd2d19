"""A tiny random VoxCPM2 checkpoint in the hub's layout, for tests and the CPU demo: make_tiny_checkpoint(OUT)

config.json, model.safetensors, audiovae.safetensors and a small Llama-style tokenizer (tokenizer.json and its
config): every file upstream's loader reads, at a size a CPU trains in seconds. Its output is noise.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tts_lib.common.fileio import atomic_write_json, atomic_write_text
from tts_lib.models import TINY_README_TITLE
from tts_lib.models.voxcpm.checkpoint import CONFIG_FILE, VAE_FILES, save_weights
from tts_lib.models.voxcpm.config import VoxCPM2Config
from tts_lib.models.voxcpm.model import VoxCPM2Model
from tts_lib.models.voxcpm.vae import AudioVAE, AudioVAEConfig

ROPE = {"type": "longrope", "long_factor": [1.0, 1.5, 2.0, 3.0], "short_factor": [1.0, 1.1, 1.2, 1.3],
        "original_max_position_embeddings": 256}  # fmt: skip
# 16 kHz in, 640 samples a latent frame (25 a second, as VoxCPM2), 48 kHz out: the real rates at toy widths.
TINY_VAE = {"encoder_dim": 4, "encoder_rates": [2, 4, 8, 10], "latent_dim": 8, "decoder_dim": 32,
            "decoder_rates": [10, 8, 6, 4], "depthwise": True, "sample_rate": 16000,
            "out_sample_rate": 48000}  # fmt: skip
LETTERS = "abcdefghijklmnopqrstuvwxyzäöåሀለሐመሠረሰሸቀበ你好世界"
WORDS = ["你好", "世界"]  # multi-character CJK tokens: the model splits them into characters


def tiny_config(vocab_size: int) -> dict:
    return {
        "architecture": "voxcpm2",
        "lm_config": {"bos_token_id": 1, "eos_token_id": 2, "hidden_size": 32, "intermediate_size": 64,
                      "max_position_embeddings": 512, "num_attention_heads": 4, "num_hidden_layers": 2,
                      "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_scaling": ROPE, "vocab_size": vocab_size,
                      "use_mup": True, "scale_emb": 12.0, "dim_model_base": 256, "scale_depth": 1.4,
                      "rope_theta": 10000.0, "no_rope": False},
        "patch_size": 4, "feat_dim": TINY_VAE["latent_dim"], "residual_lm_num_layers": 1, "residual_lm_no_rope": False,
        "scalar_quantization_latent_dim": 16, "scalar_quantization_scale": 9,
        "encoder_config": {"hidden_dim": 16, "ffn_dim": 32, "num_heads": 2, "num_layers": 1},
        "dit_config": {"hidden_dim": 16, "ffn_dim": 32, "num_heads": 2, "num_layers": 1, "dit_mean_mode": False,
                       "cfm_config": {"sigma_min": 1e-6, "solver": "euler", "t_scheduler": "log-norm",
                                      "training_cfg_rate": 0.1, "inference_cfg_rate": 1.0}},
        "audio_vae_config": TINY_VAE, "max_length": 512, "device": "cuda", "dtype": "bfloat16",
    }  # fmt: skip


def tiny_tokenizer():
    """A Llama-style BPE (▁ for spaces, byte fallback) over Latin, Finnish, a little Ethiopic and CJK."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import LlamaTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["▁", *LETTERS, *WORDS, *[f"▁{c}" for c in LETTERS[:29]]]:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", c) for c in LETTERS[:29]] + [(w[0], w[1]) for w in WORDS]
    bpe = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])  # fmt: skip
    return LlamaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                              add_bos_token=False, add_eos_token=False)  # fmt: skip


def make_tiny_checkpoint(out_dir: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the tiny VoxCPM2 folder; the same seed gives the same weights."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass --overwrite to replace its checkpoint files")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    raw = tiny_config(-(-len(tokenizer) // 64) * 64)
    torch.manual_seed(seed)
    model = VoxCPM2Model(VoxCPM2Config.from_dict(raw))
    vae = AudioVAE(AudioVAEConfig.from_dict(TINY_VAE))
    atomic_write_json(out / CONFIG_FILE, raw)
    save_weights(model.state_dict(), out / "model.safetensors")
    save_weights(vae.state_dict(), out / VAE_FILES[0])
    tokenizer.save_pretrained(str(out))
    atomic_write_text(
        out / "README.md",
        f"{TINY_README_TITLE}\n\nA random-initialised VoxCPM2-layout checkpoint made by tts_lib (seed {seed}). It "
        "exists so the pipeline runs offline on a CPU. It has never been trained on speech: **everything it "
        "generates is noise.**\n",
    )
    return out
