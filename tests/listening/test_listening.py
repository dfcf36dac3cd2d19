"""listening on tiny-demo: synthesize returns the codec's audio, render_versions writes one WAV per version
and sentence with the same seed and keeps existing ones, players_html is an escaped table of players."""

import base64
import io
import re

import numpy as np
import pytest
import soundfile as sf

from tts_lib.listening.players import EVAL_SENTENCES, players_html, players_page, render_versions, synthesize
from tts_lib.models import load_family
from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    family = load_family(make_tiny_checkpoint(tmp_path_factory.mktemp("listen") / "tiny-demo"))
    return family, family.load_model().eval()


def test_eval_sentences_cover_the_hard_cases():
    for language in ("fi", "am"):
        sentences = EVAL_SENTENCES[language]
        assert 4 <= len(sentences) <= 5
        assert max(len(s) for s in sentences) > 100  # a long one
        assert any(ch.isdigit() for s in sentences for ch in s)  # numbers as digits
    assert all(ch in "".join(EVAL_SENTENCES["fi"]) for ch in "åäöÅ")
    assert all("\u1200" <= ch <= "\u137f" for ch in "".join(EVAL_SENTENCES["am"]) if ch.isalpha())  # Ge'ez script


def test_synthesize_is_the_codec_decoding_the_generated_codes(tiny):
    family, model = tiny
    wave, rate = synthesize(family, model, "Hyvää huomenta", max_new_tokens=8, seed=3)
    codes = family.generate(model, "Hyvää huomenta", max_new_tokens=8, seed=3)
    codec = family.codec("cpu")
    assert rate == codec.sample_rate and wave.dtype == np.float32
    np.testing.assert_allclose(wave, codec.decode(codes).numpy(), atol=1e-6)
    assert len(wave) == codes.shape[1] * codec.frame_length


def test_no_codes_give_an_empty_wave(tiny, monkeypatch):
    family, model = tiny
    monkeypatch.setattr(family, "generate", lambda *a, **k: np.zeros((family.config.num_codebooks, 0), int))
    wave, rate = synthesize(family, model, "x")
    assert wave.shape == (0,) and wave.dtype == np.float32 and rate == family.codec("cpu").sample_rate


def test_render_versions_writes_every_version_and_keeps_existing_wavs(tiny, tmp_path):
    family, model = tiny
    sentences = ["Hyvää huomenta.", "Kello on 7.45."]
    rows = render_versions({"before": tiny, "after": tiny}, sentences, tmp_path, max_new_tokens=8, log=None)
    order = [(r["version"], r["sentence_index"]) for r in rows]
    assert order == [("before", 0), ("before", 1), ("after", 0), ("after", 1)]
    for r in rows:
        assert r["wav"] == str(tmp_path / r["version"] / f"{r['sentence_index']}.wav")
        assert r["seconds"] == pytest.approx(sf.info(r["wav"]).duration) and r["seconds"] > 0
    # The same model and seed in two versions: the same audio, so differences between versions are the weights'.
    assert np.array_equal(sf.read(rows[0]["wav"])[0], sf.read(rows[2]["wav"])[0])

    def never():
        raise AssertionError("a version whose WAVs all exist must not be loaded")

    again = render_versions({"before": never, "after": never}, sentences, tmp_path, max_new_tokens=8, log=None)
    assert again == rows
    (tmp_path / "after" / "1.txt").write_text("another sentence")  # a WAV of other words is made again
    with pytest.raises(AssertionError, match="must not be loaded"):
        render_versions({"after": never}, sentences, tmp_path, log=None)


def test_players_embed_their_audio_or_point_at_the_wavs(tmp_path):
    rows = []
    for v in ("base", "<v2>"):
        for k, text in enumerate(["a & b", "c", "ሰላም"]):
            path = tmp_path / v / f"{k}.wav"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, np.sin(np.arange(4410) / (3.0 + k)).astype(np.float32) * 0.3, 44100)
            rows.append({"version": v, "sentence_index": k, "text": text, "wav": str(path), "seconds": 0.1})
    linked = players_html(rows, relative_to=tmp_path / "notebooks")  # a notebook output: JupyterLab serves them
    assert linked.count("<audio") == 6 and "base64" not in linked and 'src="../base/0.wav"' in linked
    assert 'href="../&lt;v2&gt;/2.wav"' in linked and "a &amp; b" in linked and "<v2>" not in linked
    assert linked.count("<tr>") == 4 and len(linked) < 3000
    page = players_page(rows, tmp_path)  # players.html: plays from disk and in JupyterLab's HTML viewer
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page and "ሰላም" in page
    uris = re.findall(r'src="data:audio/flac;base64,([^"]+)"', page)
    assert len(uris) == 6 and "<code>base/0.wav</code>" in page and "href=" not in page
    decoded, rate = sf.read(io.BytesIO(base64.b64decode(uris[0])), dtype="float32")
    original, _ = sf.read(tmp_path / "base" / "0.wav", dtype="float32")
    assert rate == 44100 and np.abs(decoded - original).max() < 1e-4  # lossless up to 16-bit rounding
