"""Audio reading with soundfile + soxr: header info, mono float32 decode, resampling.

Every failure becomes an `AudioError` that names the file and the reason, so validation can
report it and a data-loader worker never dies on a bare libsndfile message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")


class AudioError(Exception):
    """An audio file could not be read; the message names the file and the reason."""


@dataclass(frozen=True)
class AudioInfo:
    duration: float  # seconds
    sample_rate: int  # Hz
    channels: int
    frames: int  # samples per channel


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read only the header. Raises AudioError for a missing, unreadable or corrupt file."""
    if not os.path.exists(path):
        raise AudioError(f"{path}: audio file not found")
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile raises LibsndfileError, RuntimeError or TypeError
        raise AudioError(f"{path}: not a readable audio file ({_reason(e)})") from e
    frames = int(info.frames)
    if info.samplerate <= 0:
        raise AudioError(f"{path}: header has sample rate {info.samplerate}")
    return AudioInfo(frames / info.samplerate, int(info.samplerate), int(info.channels), frames)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode the whole file. Returns (samples (frames, channels) float32, sample_rate)."""
    if not os.path.exists(path):
        raise AudioError(f"{path}: audio file not found")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{path}: could not decode audio ({_reason(e)})") from e
    return data, int(sr)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) by averaging channels."""
    return samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a mono (frames,) signal with soxr's high-quality filter."""
    if from_rate == to_rate:
        return samples
    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Read, downmix to mono and resample to `sample_rate`. Returns (frames,) float32 in [-1, 1]."""
    samples, sr = read_audio(path)
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: audio has zero samples")
    return resample(to_mono(samples), sr, sample_rate)


def _reason(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    # libsndfile prefixes its messages with the path; keep only the reason.
    return text.split(": ", 1)[-1] if text.startswith(("Error opening", "<")) else text
