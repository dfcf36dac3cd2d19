import numpy as np
import pytest
import soundfile as sf
from conftest import tone, write_audio

from tts_lib.data.audio import AudioError, audio_info, load_audio, resample


def test_info_reads_the_header(tmp_path):
    info = audio_info(write_audio(tmp_path / "a.flac", 1.25, sr=22050, channels=2))
    assert (info.sample_rate, info.channels, info.frames) == (22050, 2, 27562)
    assert info.duration == pytest.approx(1.25, abs=1e-4)


def test_load_downmixes_and_resamples(tmp_path):
    left, right = tone(1.0, 16000, freq=300), tone(1.0, 16000, freq=300, amplitude=0.1)
    path = tmp_path / "s.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    x = load_audio(path, 44100)
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) == 44100
    # The downmix is the mean of the channels: peak about (0.3 + 0.1) / 2.
    assert np.abs(x[1000:-1000]).max() == pytest.approx(0.2, abs=0.02)


def test_resample_keeps_the_tone():
    x = tone(1.0, 22050, freq=440, amplitude=0.5)
    y = resample(x, 22050, 44100)
    spectrum = np.abs(np.fft.rfft(y))
    assert np.argmax(spectrum) == pytest.approx(440, abs=1)  # 1 s of audio: bin k is k Hz


@pytest.mark.parametrize("content", [None, b"not audio at all" * 20])
def test_errors_name_the_file(tmp_path, content):
    path = tmp_path / "bad.wav"
    if content:
        path.write_bytes(content)
    for fn in (audio_info, lambda p: load_audio(p, 44100)):
        with pytest.raises(AudioError, match="bad.wav"):
            fn(path)


def test_zero_samples_is_an_error_when_loading(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 44100)
    with pytest.raises(AudioError, match="zero samples"):
        load_audio(path, 44100)
