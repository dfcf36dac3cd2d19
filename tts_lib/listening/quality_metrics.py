"""evaluate_versions(rows, references): character error rate and speaker similarity of rendered versions.

    from tts_lib.listening.players import render_versions
    from tts_lib.listening.quality_metrics import evaluate_versions, format_metrics

    rows = render_versions(models, sentences, "runs/v1/listen")
    report = evaluate_versions(rows, references=["data/fi_male/fi_male_001.flac"], language="fi")
    print(format_metrics(report))

CER: each WAV is transcribed by an ASR model (Whisper) and compared with the sentence it should say, after
`normalize_text`. Speaker similarity: cosine between the x-vector of each WAV and the mean x-vector of the
reference clips (WavLM trained for speaker verification). Both models load through transformers' public API,
from the local Hugging Face cache only when offline (HF_HUB_OFFLINE=1). When they cannot be loaded, or there
is no GPU and `allow_cpu` is False, the report is {"available": False, "reason": ...}: numbers are only ever
ones that were measured. Tests and other models plug in through `asr` and `speaker_encoder`: any callables
(wave float32, sample_rate) -> transcript, and -> 1-D embedding.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ASR_MODEL = "openai/whisper-small"
SPEAKER_MODEL = "microsoft/wavlm-base-plus-sv"

Asr = Callable[[np.ndarray, int], str]
SpeakerEncoder = Callable[[np.ndarray, int], np.ndarray]


def normalize_text(text: str) -> str:
    """What CER compares: Unicode NFC, lowercase, punctuation (any Unicode P* category, so Ge'ez ። and ፣ too)
    removed, whitespace runs collapsed to one space, trimmed. Digits stay digits: an ASR that writes "seven" for
    "7" is counted wrong, which is what we want to hear about."""
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return re.sub(r"\s+", " ", text).strip()


def character_error_rate(reference: str, hypothesis: str) -> float:
    """Character edit distance / characters in the reference, both normalized (normalize_text); can exceed 1
    when the hypothesis is much longer. An empty reference gives 0.0 for an empty hypothesis, else 1.0."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    import jiwer  # rapidfuzz's C edit distance underneath

    return float(jiwer.cer(ref, hyp))


def speaker_similarity(embedding_a: np.ndarray, embedding_b: np.ndarray) -> float:
    """Cosine similarity of two speaker embeddings: 1 same direction, 0 orthogonal."""
    a, b = np.asarray(embedding_a, np.float64).ravel(), np.asarray(embedding_b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")


def _local_or_hub(model: str) -> str:
    """Offline: the model's folder in the local Hugging Face cache (raises when it is not there), so nothing
    tries the network, whenever huggingface_hub was imported; online: the id, for transformers to download."""
    if not _offline() or Path(model).is_dir():
        return model
    from huggingface_hub import snapshot_download

    return snapshot_download(model, local_files_only=True)


def _resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    import soxr

    return wave if rate == target else soxr.resample(wave, rate, target).astype(np.float32)


def load_asr(model: str = ASR_MODEL, device: str | None = None, language: str | None = None) -> Asr:
    """A Whisper (or other transformers ASR) transcriber: (wave, rate) -> text. Offline it reads only the cache."""
    source = _local_or_hub(model)  # before importing transformers (seconds): offline without the model fails fast
    from transformers import pipeline

    pipe = pipeline("automatic-speech-recognition", model=source, device=device)
    rate = pipe.feature_extractor.sampling_rate
    generate_kwargs = {"language": language, "task": "transcribe"} if language else {}

    def transcribe(wave: np.ndarray, sample_rate: int) -> str:
        audio = {"raw": _resample(wave, sample_rate, rate), "sampling_rate": rate}
        return pipe(audio, generate_kwargs=generate_kwargs)["text"]

    transcribe.model_name = model
    return transcribe


def load_speaker_encoder(model: str = SPEAKER_MODEL, device: str | None = None) -> SpeakerEncoder:
    """An x-vector speaker encoder: (wave, rate) -> 1-D embedding. Offline it reads only the cache."""
    source = _local_or_hub(model)
    import torch
    from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

    extractor = AutoFeatureExtractor.from_pretrained(source)
    net = AutoModelForAudioXVector.from_pretrained(source).eval().to(device or "cpu")
    rate = extractor.sampling_rate

    def embed(wave: np.ndarray, sample_rate: int) -> np.ndarray:
        inputs = extractor(_resample(wave, sample_rate, rate), sampling_rate=rate, return_tensors="pt")
        with torch.inference_mode():
            return net(**inputs.to(net.device)).embeddings[0].float().cpu().numpy()

    embed.model_name = model
    return embed


def _read_mono(path: str | Path) -> tuple[np.ndarray, int]:
    wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return wave.mean(axis=1), rate


def _not_available(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


def evaluate_versions(
    rows: Sequence[dict[str, Any]],
    references: Sequence[str | Path] = (),
    *,
    language: str | None = None,
    asr: Asr | None = None,
    speaker_encoder: SpeakerEncoder | None = None,
    device: str | None = None,
    allow_cpu: bool = False,
) -> dict[str, Any]:
    """Rows from listening.render_versions -> {"available": True, "versions": {name: {"cer", "speaker_similarity",
    "sentences"}}, "rows": [...], "asr_model", "speaker_model"}, or {"available": False, "reason"}. Speaker
    similarity is None when no reference clips are given. Models are loaded (on `device`, default CUDA when
    there is one) only when not injected; on a CPU only with allow_cpu, as Whisper there takes minutes."""
    if asr is None or speaker_encoder is None:
        try:
            import torch

            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            if device == "cpu" and not allow_cpu:
                return _not_available("no GPU: Whisper on a CPU takes minutes per version (allow_cpu=True to wait)")
            asr = asr or load_asr(device=device, language=language)
            speaker_encoder = speaker_encoder or load_speaker_encoder(device=device)
        except Exception as exc:  # offline, not in the cache, out of memory: say which, measure nothing
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return _not_available(f"could not load the metric models ({type(exc).__name__}: {why})")
    target = None
    if references:
        target = np.mean([speaker_encoder(*_read_mono(p)) for p in references], axis=0)
    scored = []
    for row in rows:
        wave, rate = _read_mono(row["wav"])
        transcript = asr(wave, rate) if len(wave) else ""  # silence says nothing: CER 1
        similarity = (
            speaker_similarity(speaker_encoder(wave, rate), target) if target is not None and len(wave) else None
        )
        scored.append({**row, "transcript": transcript, "cer": character_error_rate(row["text"], transcript),
                       "speaker_similarity": similarity})  # fmt: skip
    versions = {}
    for name in dict.fromkeys(r["version"] for r in scored):
        mine = [r for r in scored if r["version"] == name]
        sims = [r["speaker_similarity"] for r in mine if r["speaker_similarity"] is not None]
        versions[name] = {"cer": float(np.mean([r["cer"] for r in mine])), "sentences": len(mine),
                          "speaker_similarity": float(np.mean(sims)) if sims else None}  # fmt: skip
    return {
        "available": True,
        "asr_model": getattr(asr, "model_name", "injected"),
        "speaker_model": getattr(speaker_encoder, "model_name", "injected"),
        "references": [str(p) for p in references],
        "versions": versions,
        "rows": scored,
    }


def format_metrics(report: dict[str, Any]) -> str:
    """A few readable lines: what was measured and how, or why nothing was."""
    if not report.get("available"):
        return f"quality metrics not available: {report.get('reason', 'unknown reason')}"
    refs = ", ".join(report["references"]) or "none given, so no speaker similarity"
    lines = [
        f"CER: {report['asr_model']} transcripts vs the sentences (normalized: NFC, lowercase, no punctuation)",
        f"speaker similarity: cosine of {report['speaker_model']} x-vectors vs the reference clips ({refs})",
        f"{'version':12} {'CER':>6} {'speaker sim':>11} sentences",
    ]
    for name, v in report["versions"].items():
        sim = "-" if v["speaker_similarity"] is None else f"{v['speaker_similarity']:.3f}"
        lines.append(f"{name:12} {v['cer']:6.3f} {sim:>11} {v['sentences']}")
    return "\n".join(lines)
