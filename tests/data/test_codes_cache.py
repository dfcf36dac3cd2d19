import shutil

import numpy as np
import pytest
from conftest import write_audio

from tts_lib.data.codes_cache import extract_codes
from tts_lib.data.manifest import Item
from tts_lib.models import CodecSpec

HOP = 2048


class FrameEnergyCodec:
    """A deterministic stand-in for a codec: each 2048-sample frame's RMS, quantised, in 2 rows.
    It is a real function of the audio, so wrong caching (stale or mixed-up codes) shows."""

    def __init__(self):
        self.calls = 0

    def __call__(self, waves):
        self.calls += 1
        out = []
        for w in waves:
            frames = -(-len(w) // HOP)
            padded = np.pad(w, (0, frames * HOP - len(w))).reshape(frames, HOP)
            level = np.minimum((np.sqrt((padded**2).mean(1)) * 1000).astype(np.int64), 4095)
            out.append(np.stack([level, level % 7]))
        return out


def spec(codec, checkpoint_hash="a" * 64):
    return CodecSpec(codec, sample_rate=44100, num_codebooks=2, frame_rate=44100 / HOP, checkpoint_hash=checkpoint_hash)


def items_in(folder, n, start=0):
    return [
        Item(
            f"s/{k}",
            str(write_audio(folder / f"{k}.wav", 0.5 + 0.1 * k, amplitude=0.05 * (k + 1), seed=k)),
            "t",
            "s",
            duration=0.5 + 0.1 * k,
        )
        for k in range(start, start + n)
    ]


def test_encodes_once_then_reads_the_cache(tmp_path, capsys):
    codec = FrameEnergyCodec()
    items = items_in(tmp_path / "audio", 5)
    first = extract_codes(items, spec(codec), tmp_path / "cache", batch_size=2)
    assert (first.encoded, first.cached, codec.calls) == (5, 0, 3)
    codes = [np.load(i.codes) for i in items]
    assert codes[0].shape == (2, 11) and codes[4].shape == (2, 20)  # ceil(0.5 s * 21.5), ceil(0.9 s * 21.5)
    assert len({c[0].sum() for c in codes}) == 5  # each clip got its own codes
    said = capsys.readouterr().out
    assert "codes: 5/5 encoded" in said and "5 clips (0.00 h of audio) to encode on cpu" in said
    assert "codes: about " in said and "at the first batch's rate" in said  # measured before the rest is encoded
    assert said.index("at the first batch's rate") < said.index("codes: 5/5 encoded")

    again = [Item(**{**vars(i), "codes": None}) for i in items]
    calls = []
    second = extract_codes(again, spec(codec), tmp_path / "cache", progress=lambda *a: calls.append(a))
    assert (second.encoded, second.cached, codec.calls) == (0, 5, 3)
    assert [i.codes for i in again] == [i.codes for i in items]
    assert "codes: nothing to encode: 5 cached" in capsys.readouterr().out
    assert calls == [(0, 0)]  # a notebook's bar ends done, not at "0/?"


def test_only_new_or_changed_audio_is_encoded(tmp_path):
    codec = FrameEnergyCodec()
    items = items_in(tmp_path / "audio", 3)
    extract_codes(items, spec(codec), tmp_path / "cache")
    shutil.move(items[0].audio, tmp_path / "renamed.wav")  # same content, new name: still cached
    items[0].audio = str(tmp_path / "renamed.wav")
    more = items + items_in(tmp_path / "audio", 2, start=3)
    summary = extract_codes(more, spec(codec), tmp_path / "cache")
    assert (summary.encoded, summary.cached) == (2, 3)
    other_codec = extract_codes(more, spec(codec, checkpoint_hash="b" * 64), tmp_path / "cache")
    assert other_codec.encoded == 5  # other weights: nothing reused


def test_upstream_npy_beside_the_audio_is_reused_when_it_fits(tmp_path):
    codec = FrameEnergyCodec()
    good, bad = items_in(tmp_path / "audio", 2)
    np.save(tmp_path / "audio" / "0.npy", np.zeros((2, 11), dtype=np.int64))
    np.save(tmp_path / "audio" / "1.npy", np.zeros((8, 13), dtype=np.int64))  # another codec's layout
    good.codes, bad.codes = str(tmp_path / "audio" / "0.npy"), str(tmp_path / "audio" / "1.npy")
    summary = extract_codes([good, bad], spec(codec), tmp_path / "cache")
    assert (summary.reused_upstream, summary.encoded) == (1, 1)
    assert good.codes == str(tmp_path / "audio" / "0.npy") and "cache" in bad.codes


def test_unreadable_audio_is_reported_not_dropped(tmp_path):
    items = items_in(tmp_path / "audio", 2)
    (tmp_path / "audio" / "1.wav").write_bytes(b"garbage" * 100)
    summary = extract_codes(items, spec(FrameEnergyCodec()), tmp_path / "cache")
    assert summary.encoded == 1 and [f[0] for f in summary.failed] == ["s/1"]
    assert items[1].codes is None and "1.wav" in summary.failed[0][1]


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    class Dies(FrameEnergyCodec):
        def __call__(self, waves):
            if self.calls == 2:
                raise KeyboardInterrupt  # as if the process were stopped mid-extraction
            return super().__call__(waves)

    items = items_in(tmp_path / "audio", 6)
    with pytest.raises(KeyboardInterrupt):
        extract_codes(items, spec(Dies()), tmp_path / "cache", batch_size=2)
    written = sorted((tmp_path / "cache").rglob("*"))
    assert len([p for p in written if p.suffix == ".npy"]) == 4
    assert not [p for p in written if p.name.endswith(".tmp")]
    fresh = [Item(**{**vars(i), "codes": None}) for i in items]
    codec = FrameEnergyCodec()
    summary = extract_codes(fresh, spec(codec), tmp_path / "cache", batch_size=2)
    assert (summary.cached, summary.encoded, codec.calls) == (4, 2, 1)


def test_the_estimate_scales_the_first_batch_to_all_the_audio():
    from tts_lib.data.codes_cache import estimate_line

    line = estimate_line(first_audio_s=60.0, first_s=2.0, total_audio_s=3600.0)  # 30 s of audio per second
    assert "about 2.0 min" in line and "30.0 s of audio per second" in line
    assert "no time estimate" in estimate_line(0.0, 1.0, 10.0)


def test_targets_are_stored_exactly_whatever_their_dtype_and_shape(tmp_path):
    """Integer codes go to the smallest int dtype that holds them; float latents (continuous targets, as
    VoxCPM trains on) keep every bit; the loop gets int64 codes and the floats unchanged."""
    import torch

    from tts_lib.data.codes_cache import save_codes
    from tts_lib.training.train import targets

    cases = {
        "codes": (np.array([[0, 4095], [7, 1]], dtype=np.int64), np.int16),
        "negative": (np.array([[-40000, 5]]), np.int32),
        "latents": (np.random.default_rng(0).normal(size=(3, 5, 64)).astype(np.float32), np.float32),
        "latents64": (np.random.default_rng(1).normal(size=(7,)), np.float64),
    }
    for name, (values, stored_as) in cases.items():
        save_codes(tmp_path / f"{name}.npy", values)
        stored = np.load(tmp_path / f"{name}.npy")
        assert stored.dtype == stored_as and np.array_equal(stored, values), name
        loaded = targets(stored)
        integer = np.issubdtype(values.dtype, np.integer)
        assert loaded.dtype == (torch.int64 if integer else torch.from_numpy(values).dtype), name
        assert np.array_equal(loaded.numpy(), values), name
    with pytest.raises(TypeError, match="integer codes or float latents, found <U1"):
        save_codes(tmp_path / "text.npy", np.array(["a"]))


def test_reference_clips_are_encoded_once_into_the_same_cache_and_kept_by_the_manifest(tmp_path):
    from tts_lib.data.codes_cache import extract_reference_codes
    from tts_lib.data.manifest import read_manifest, write_manifest

    codec = FrameEnergyCodec()
    items = items_in(tmp_path / "audio", 4)
    items[0].ref_audio = items[1].ref_audio = items[3].audio  # two rows share a reference; one is also an item
    items[2].ref_audio = str(tmp_path / "audio" / "gone.wav")
    extract_codes(items, spec(codec), tmp_path / "cache")
    refs = extract_reference_codes(items, spec(codec), tmp_path / "cache")
    assert (refs.encoded, refs.cached) == (0, 1)  # the shared clip is item 3's: already in the cache
    assert items[0].ref_codes == items[1].ref_codes == items[3].codes and items[3].ref_codes is None
    assert items[2].ref_codes is None and [i for i, _ in refs.failed] == ["s/2"] and "gone.wav" in refs.failed[0][1]
    back = read_manifest(write_manifest(tmp_path / "data" / "manifest.jsonl", items))
    assert back == items and np.array_equal(np.load(back[0].ref_codes), np.load(items[3].codes))
