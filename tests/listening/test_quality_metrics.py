"""quality_metrics on known answers: CER and its normalisation, cosine similarity, and evaluate_versions both
unavailable (models cannot load: no numbers) and with injected fake models (numbers computed from them)."""

import numpy as np
import pytest
import soundfile as sf

from tts_lib.listening import quality_metrics as qm
from tts_lib.listening.quality_metrics import (
    character_error_rate,
    evaluate_versions,
    format_metrics,
    normalize_text,
    speaker_similarity,
)


def test_cer_known_answers():
    assert character_error_rate("hyvää huomenta", "hyvää huomenta") == 0.0
    assert character_error_rate("abcd", "qqqq") == 1.0
    assert character_error_rate("kitten", "sitting") == pytest.approx(3 / 6)  # two substitutions, one insertion
    assert character_error_rate("ab", "") == 1.0
    assert character_error_rate("", "") == 0.0 and character_error_rate("...", "x") == 1.0


def test_normalisation():
    assert normalize_text("  Hyvää   HUOMENTA!\n") == "hyvää huomenta"
    assert normalize_text("A\u0308iti, tule.") == "äiti tule"  # decomposed ä is composed (NFC) before comparing
    assert normalize_text("ሰላም። እንዴት ነህ፣ ደህና?") == "ሰላም እንዴት ነህ ደህና"  # Ge'ez punctuation is punctuation
    assert normalize_text("Kello 7.45") == "kello 7 45"  # digits stay
    assert character_error_rate("Hyvää huomenta!", "hyvää  huomenta") == 0.0


def test_speaker_similarity_is_cosine():
    a = np.array([0.3, -1.2, 2.0])
    assert speaker_similarity(a, a) == pytest.approx(1.0)
    assert speaker_similarity(a, 5 * a) == pytest.approx(1.0)
    assert speaker_similarity([1.0, 0.0], [0.0, 2.0]) == pytest.approx(0.0)
    assert speaker_similarity([1.0, 0.0], [-1.0, 0.0]) == pytest.approx(-1.0)


@pytest.fixture
def rows(tmp_path):
    """Two versions x two sentences; "loud" WAVs have amplitude 0.5, "quiet" ones 0.1, one WAV is empty."""
    out = []
    for version, amplitude in (("before", 0.1), ("after", 0.5)):
        for k, text in enumerate(["Hyvää huomenta.", "abcd"]):
            path = tmp_path / version / f"{k}.wav"
            path.parent.mkdir(exist_ok=True)
            n = 0 if (version, k) == ("before", 1) else 4410
            sf.write(path, np.full(n, amplitude, np.float32), 44100)
            out.append({"version": version, "sentence_index": k, "text": text, "wav": str(path), "seconds": n / 44100})
    sf.write(tmp_path / "ref.wav", np.full(4410, 0.5, np.float32), 44100)
    return out


def test_offline_means_not_available(rows, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))  # nothing downloaded: nothing to load
    report = evaluate_versions(rows, [tmp_path / "ref.wav"], device="cpu", allow_cpu=True)
    assert report["available"] is False and "could not load" in report["reason"]
    assert format_metrics(report).startswith("quality metrics not available: could not load")
    assert evaluate_versions(rows, device="cpu")["reason"].startswith("no GPU")  # CPU without allow_cpu: not tried

    def broken(*a, **k):
        raise OSError("model not in the cache")

    monkeypatch.setattr(qm, "load_asr", broken)
    report = evaluate_versions(rows, device="cpu", allow_cpu=True)
    reason = "could not load the metric models (OSError: model not in the cache)"
    assert report == {"available": False, "reason": reason}


def test_numbers_come_from_the_injected_models(rows, tmp_path):
    def asr(wave, rate):  # a loud clip is heard perfectly, a quiet one as the wrong words
        assert rate == 44100 and wave.dtype == np.float32
        return "hyvää huomenta" if wave.max() > 0.3 else "qqqq"

    def encoder(wave, rate):  # the "speaker" of a clip is its loudness
        return np.array([1.0, 0.0]) if wave.max() > 0.3 else np.array([0.0, 1.0])

    report = evaluate_versions(rows, [tmp_path / "ref.wav"], asr=asr, speaker_encoder=encoder)
    assert report["available"] and report["asr_model"] == "injected"
    after, before = report["versions"]["after"], report["versions"]["before"]
    # "abcd" heard as the 14 letters of "hyvää huomenta": 14 edits / 4 letters (CER can pass 1)
    assert after["cer"] == pytest.approx((0.0 + 14 / 4) / 2)
    assert before["cer"] == pytest.approx((1.0 + 1.0) / 2)  # "qqqq" for the first; the empty WAV is not transcribed
    assert after["speaker_similarity"] == pytest.approx(1.0) and before["speaker_similarity"] == pytest.approx(0.0)
    assert [r["transcript"] for r in report["rows"]] == ["qqqq", "", "hyvää huomenta", "hyvää huomenta"]
    text = format_metrics(report)
    assert "injected" in text and "not available" not in text and "after" in text


def test_the_speaker_encoder_loads_a_local_xvector_model_and_a_clip_matches_itself(tmp_path):
    """A tiny random WavLM x-vector model in transformers' folder layout stands in for wavlm-base-plus-sv:
    the loader, the resampling and the embedding call run for real; a clip's similarity to itself is 1."""
    transformers = pytest.importorskip("transformers")
    from tts_lib.listening.quality_metrics import load_speaker_encoder, speaker_similarity

    config = transformers.WavLMConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, tdnn_dim=(32, 32), tdnn_kernel=(5, 3), tdnn_dilation=(1, 2),
        xvector_output_dim=16,
    )  # fmt: skip
    transformers.WavLMForXVector(config).save_pretrained(tmp_path / "wavlm")
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(tmp_path / "wavlm")
    embed = load_speaker_encoder(str(tmp_path / "wavlm"))
    rng = np.random.default_rng(0)
    clip, other = rng.normal(0, 0.1, 44100).astype(np.float32), rng.normal(0, 0.1, 44100).astype(np.float32) ** 3
    a, b = embed(clip, 44100), embed(clip, 44100)
    assert a.shape == (16,) and speaker_similarity(a, b) == pytest.approx(1.0, abs=1e-6)
    assert speaker_similarity(a, embed(other, 44100)) < 0.9999


def test_the_asr_loader_runs_a_local_transformers_model(tmp_path):
    """A tiny random CTC model stands in for Whisper (both go through transformers' ASR pipeline): the loader,
    the resampling to the model's rate and the transcription call run for real, and the text feeds the CER."""
    import json

    transformers = pytest.importorskip("transformers")
    from tts_lib.listening.quality_metrics import load_asr

    folder = tmp_path / "ctc"
    folder.mkdir()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate("abcdefghij")}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))
    extractor = transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000)
    transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    config = transformers.Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )  # fmt: skip
    transformers.Wav2Vec2ForCTC(config).save_pretrained(folder)
    transcribe = load_asr(str(folder))
    clip = np.random.default_rng(0).normal(0, 0.1, 44100).astype(np.float32)
    text = transcribe(clip, 44100)
    assert isinstance(text, str)  # random weights: any string of its vocabulary
    assert transcribe(clip, 44100) == text  # deterministic
    assert qm.character_error_rate(text, text) == 0.0
