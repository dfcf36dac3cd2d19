"""Shared fixtures: small audio files and a tiny byte-level BPE tokenizer, made on the fly."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def tone(seconds: float, sr: int = 44100, amplitude: float = 0.3, freq: float = 220.0, seed: int = 0):
    """A tone plus a little noise, (frames,) float32; `seed` makes different clips differ."""
    t = np.arange(int(round(seconds * sr))) / sr
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (amplitude * np.sin(2 * np.pi * freq * t) + amplitude * noise).astype(np.float32)


def write_audio(path: Path, seconds: float = 1.0, sr: int = 44100, channels: int = 1, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = tone(seconds, sr, **kw)
    sf.write(path, np.stack([x] * channels, axis=1) if channels > 1 else x, sr)
    return path


def audio_bytes(fmt: str = "WAV", seconds: float = 0.1, sr: int = 16000, seed: int = 0) -> bytes:
    """A tone encoded in memory, as a parquet shard stores it."""
    buf = io.BytesIO()
    sf.write(buf, tone(seconds, sr, seed=seed), sr, format=fmt)
    return buf.getvalue()


@pytest.fixture
def audio_file():
    return write_audio


DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"


def copy_clips(dst: Path, speaker: str, numbers: range) -> None:
    """Clips `numbers` of a data/demo speaker (audio and .lab) into dst/<speaker>/, Fish Speech layout."""
    import shutil

    (dst / speaker).mkdir(parents=True, exist_ok=True)
    for n in numbers:
        for ext in (".flac", ".lab"):
            shutil.copy(DEMO / speaker / f"{speaker}_{n:03d}{ext}", dst / speaker)


def byte_level_ranks(merged_words: list[str]) -> dict[bytes, int]:
    """256 single bytes, all lowercase Latin letter pairs, then whole words: Latin encodes in few
    tokens, any script without merges falls apart into its UTF-8 bytes."""
    ranks = {bytes([b]): b for b in range(256)}
    letters = "abcdefghijklmnopqrstuvwxyz"
    for a in letters:
        for b in letters:
            ranks.setdefault((a + b).encode(), len(ranks))
    for word in merged_words:
        data = word.encode()
        for end in range(3, len(data) + 1):  # every prefix, so BPE can build the word
            ranks.setdefault(data[:end], len(ranks))
    return ranks


def write_tokenizer_dir(folder: Path, num_semantic: int = 16, words: tuple[str, ...] = ("hello", "world")):
    """A checkpoint-style tokenizer: tokenizer.tiktoken + special_tokens.json, upstream layout."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    ranks = byte_level_ranks(list(words))
    lines = [f"{base64.b64encode(t).decode() or '='} {r}" for t, r in ranks.items()]
    (folder / "tokenizer.tiktoken").write_text("\n".join(lines) + "\n")
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|im_start|>", "<|im_end|>", "<|voice|>"]
    names += [f"<|semantic:{i}|>" for i in range(num_semantic)]
    specials = {name: len(ranks) + i for i, name in enumerate(names)}
    (folder / "special_tokens.json").write_text(json.dumps(specials, indent=2))
    return folder


@pytest.fixture
def tokenizer_dir(tmp_path):
    return write_tokenizer_dir(tmp_path / "ckpt")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """(tiny-demo base folder, manifest): 12 Finnish clips of data/demo with splits and codes. Shared
    by the whole session: tests must not change these files."""
    from tts_lib.data.codes_cache import extract_codes
    from tts_lib.data.ingest import ingest
    from tts_lib.data.manifest import write_manifest
    from tts_lib.data.split import assign_splits
    from tts_lib.models import load_family
    from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("prepared")
    base = make_tiny_checkpoint(root / "tiny-demo")
    demo = Path(__file__).resolve().parent.parent / "data" / "demo"
    items = [i for i in ingest(demo).items if i.speaker.startswith("fi")][::2][:12]
    assign_splits(items)
    extract_codes(items, load_family(base).codec_spec(), root / "codes")
    write_manifest(root / "manifest.jsonl", items)
    return base, root / "manifest.jsonl"
