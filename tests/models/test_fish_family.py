"""The whole Fish Speech path on the tiny-demo checkpoint: audio -> codes -> samples -> loss ->
a training step -> save in upstream layout -> reload -> generate -> audio."""

from pathlib import Path

import numpy as np
import pytest
import torch

import tts_lib.models.fish_speech.family as family_module
from tts_lib.data.audio import load_audio
from tts_lib.data.codes_cache import extract_codes
from tts_lib.data.ingest import ingest
from tts_lib.models import VoiceReference, load_family
from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_FILES = {"config.json", "model.pth", "tokenizer.tiktoken", "special_tokens.json", "codec.pth"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-demo", seed=0)


def test_tiny_checkpoint_is_in_upstream_layout_and_reproducible(tiny_dir, tmp_path):
    assert UPSTREAM_FILES <= {p.name for p in tiny_dir.iterdir()}
    again = make_tiny_checkpoint(tmp_path / "again", seed=0)
    for name in UPSTREAM_FILES - {"model.pth", "codec.pth"}:
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes()
    a, b = (torch.load(d / "model.pth", weights_only=True) for d in (tiny_dir, again))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_tiny_checkpoint(tiny_dir)


def test_unsupported_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "s2_pro"}')
    with pytest.raises(ValueError, match="model_type 's2_pro' is not supported.*dual_ar"):
        load_family(tmp_path)


def test_demo_audio_trains_saves_reloads_and_generates(tiny_dir, tmp_path):
    family = load_family(tiny_dir)
    items = [i for i in ingest(ROOT / "data" / "demo").items if i.speaker == "fi_female"][:3]
    summary = extract_codes(items, family.codec_spec(), tmp_path / "codes")
    assert summary.encoded == 3 and not summary.failed
    codes = [torch.from_numpy(np.load(i.codes)).long() for i in items]
    assert codes[0].shape[0] == family.config.num_codebooks
    assert abs(codes[0].shape[1] - items[0].duration * 44100 / 2048) <= 1

    model = family.load_model()
    batch = family.collate([family.build_sample(i.text, c) for i, c in zip(items, codes)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = family.loss_parts(model, batch).loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]

    out = family.save(model, tmp_path / "finetuned")
    assert UPSTREAM_FILES <= {p.name for p in out.iterdir()}
    reloaded = load_family(out)
    model.eval()
    again = reloaded.load_model().eval()
    with torch.no_grad():
        assert torch.equal(model.slow_logits(batch["tokens"]), again.slow_logits(batch["tokens"]))

    first = reloaded.generate(again, "Hyvää huomenta", max_new_tokens=12, seed=3)
    assert first.shape[0] == family.config.num_codebooks and 0 < first.shape[1] <= 12
    assert torch.equal(first, reloaded.generate(again, "Hyvää huomenta", max_new_tokens=12, seed=3))

    # a reference is a clip and its transcript: the family encodes it (once per clip) into the prompt
    clip = VoiceReference(load_audio(items[0].audio, reloaded.sample_rate), items[0].text)
    encoded = []
    encode = reloaded.codec().encode
    reloaded.codec().encode = lambda wave: encoded.append(len(wave)) or encode(wave)
    prompts = []
    real_build = family_module.build_prompt
    family_module.build_prompt = lambda *a, **kw: prompts.append(kw["references"]) or real_build(*a, **kw)
    try:
        second = [reloaded.generate(again, "Hyvää huomenta", max_new_tokens=12, seed=3, references=[clip])
                  for _ in range(2)]  # fmt: skip
    finally:
        family_module.build_prompt = real_build
    assert second[0].shape[0] == family.config.num_codebooks and torch.equal(second[0], second[1])
    assert encoded == [len(clip.wave)]  # the second sentence in the same voice reuses the codes
    [(text, ref_codes)] = prompts[0]
    assert text == items[0].text and ref_codes.shape == (family.config.num_codebooks, codes[0].shape[1])
    wave = reloaded.codec().decode(first)
    assert wave.shape == (first.shape[1] * 2048,) and torch.isfinite(wave).all()


def test_the_codec_follows_the_device_asked_for(tiny_dir):
    """Code extraction asks for the training device: a codec loaded earlier elsewhere moves there."""
    family = load_family(tiny_dir)
    loaded = family.codec("cpu")
    spec = family.codec_spec("meta")  # a device this CPU machine has: the codec's weights go where they are asked
    assert spec.device == "meta" and family.codec("meta") is loaded and loaded.device == torch.device("meta")
