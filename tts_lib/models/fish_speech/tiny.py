"""The `tiny-demo` base model: python -m tts_lib make-tiny-model OUT_DIR [--seed N]

A random-initialised model, codec and tokenizer in the exact upstream folder layout (config.json,
model.pth, tokenizer.tiktoken, special_tokens.json, codec.pth), small enough to fine-tune on a CPU
in seconds. The whole pipeline runs on it offline: ingest, code extraction, training, merging,
export, generation. Its output is noise: it has never been trained on speech.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tts_lib.common.fileio import atomic_write_text
from tts_lib.models import TINY_README_TITLE
from tts_lib.models.fish_speech.codec import CODEC_CONFIG_FILE, FishCodec, FishCodecConfig
from tts_lib.models.fish_speech.config import FishSpeechConfig
from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.models.fish_speech.tokenizer import FishTokenizer

# Upstream's special tokens, in upstream's order (their ids follow the BPE ranks in this order).
SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|im_start|>", "<|im_end|>", "<|phoneme_start|>",
    "<|phoneme_end|>", "<|tool_call_start|>", "<|tool_call_end|>", "<|text|>", "<|voice|>", "<|interleave|>",
    "<|audio_start|>", "<|audio_end|>", "<|audio|>",
]  # fmt: skip
# Letters whose pairs get merges: Latin with Finnish/Swedish letters. Ethiopic gets none, so the demo's
# Amharic shows what a tokenizer that barely knows a script looks like.
MERGED_LETTERS = "abcdefghijklmnopqrstuvwxyzäöå"


def tiny_tokenizer(num_semantic: int) -> FishTokenizer:
    ranks = {bytes([b]): b for b in range(256)}
    for a in MERGED_LETTERS:
        for b in MERGED_LETTERS:
            for pair in ((a + b).encode(), (" " + a).encode()):
                # BPE needs each merge's parts to exist: multi-byte letters first as whole letters.
                for part in (a.encode(), b.encode()):
                    ranks.setdefault(part, len(ranks))
                ranks.setdefault(pair, len(ranks))
    specials = SPECIAL_TOKENS + ["<|speaker:0|>"] + [f"<|semantic:{i}|>" for i in range(num_semantic)]
    return FishTokenizer(ranks, specials, name="tiny-demo")


def tiny_configs(tokenizer_size: int, codec: FishCodecConfig) -> FishSpeechConfig:
    return FishSpeechConfig(
        model_type="dual_ar",
        vocab_size=-(-tokenizer_size // 64) * 64,  # rounded up, as real checkpoints pad their vocab
        n_layer=2, n_head=4, n_local_heads=2, dim=64, head_dim=16, intermediate_size=192,
        rope_base=1e6, norm_eps=1e-6, max_seq_len=1024, tie_word_embeddings=False, attention_qk_norm=True,
        codebook_size=codec.semantic_codebook_size, num_codebooks=codec.num_codebooks,
        scale_codebook_embeddings=True, n_fast_layer=1, fast_dim=64, fast_n_head=4, fast_n_local_heads=2,
        fast_head_dim=16, fast_intermediate_size=192, fast_attention_qk_norm=False,
    )  # fmt: skip


def make_tiny_checkpoint(out_dir: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the tiny-demo checkpoint folder; the same seed gives the same files."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass --overwrite to replace its checkpoint files")
    codec_config = FishCodecConfig.tiny()
    tokenizer = tiny_tokenizer(codec_config.semantic_codebook_size)
    config = tiny_configs(tokenizer.vocab_size, codec_config)
    torch.manual_seed(seed)
    model = FishSpeechLM(config, semantic_begin_id=tokenizer.semantic_ids[0], tokenizer=tokenizer)
    codec = FishCodec(codec_config)
    model.save_pretrained(out)  # config, weights and tokenizer files
    codec.save_pretrained(out / "codec.pth")
    codec_config.save(out / CODEC_CONFIG_FILE)
    atomic_write_text(
        out / "README.md",
        f"{TINY_README_TITLE}\n\nA random-initialised Fish Speech-layout checkpoint made by "
        f"`python -m tts_lib make-tiny-model` (seed {seed}). It exists so the pipeline runs offline on a "
        "CPU. It has never been trained on speech: **everything it generates is noise.**\n",
    )
    return out
