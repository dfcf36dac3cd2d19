"""tts_lib.launch.download: hub downloads with snapshot_download mocked (the hub is never contacted)."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import pytest
import soundfile as sf
from huggingface_hub import errors

from tts_lib.data.ingest import ingest
from tts_lib.launch import download

ROOT = Path(__file__).resolve().parents[2]
FAKE_TOKEN = "hf_FAKE_test_token_0123456789"


def hub_error(cls, status=None, message="refused"):
    """An exception of huggingface_hub's class `cls` with a response status, built without an HTTP client."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.response = SimpleNamespace(status_code=status, headers={})
    return exc


def wav_bytes(seconds=0.5, sr=16000):
    buf = io.BytesIO()
    sf.write(buf, 0.1 * np.sin(np.linspace(0, 440 * seconds * 2 * np.pi, int(sr * seconds))), sr, format="WAV")
    return buf.getvalue()


def write_fleurs(folder: Path, config="fi_fi", splits=("train", "dev"), extra_member=None):
    """The FLEURS hub layout: data/<config>/<split>.tsv and data/<config>/audio/<split>.tar.gz."""
    base = folder / "data" / config
    (base / "audio").mkdir(parents=True, exist_ok=True)
    for n, split in enumerate(splits):
        names = [f"{1000 + 10 * n + i}.wav" for i in range(2)]
        rows = [
            f"{7 + i}\t{name}\tHyvää päivää {i}.\thyvää päivää {i}\th y v ä ä\t8000\tFEMALE"
            for i, name in enumerate(names)
        ]
        rows.append("99\tmissing.wav\tEi ääntä.\tei ääntä\te i\t8000\tMALE")  # no audio in the archive
        (base / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        with tarfile.open(base / "audio" / f"{split}.tar.gz", "w:gz") as tar:
            members = [(f"{split}/{name}", wav_bytes()) for name in names]
            if extra_member:
                members.append(extra_member)
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def calls(monkeypatch):
    """Records snapshot_download's keyword arguments; `calls.effect(**kw)` decides what it does."""
    record = SimpleNamespace(kwargs=[], effect=None)

    def fake(**kwargs):
        record.kwargs.append(kwargs)
        return record.effect(**kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    return record


def write_model_files(local_dir, **_):
    for name in download.MODEL_FILES:
        (Path(local_dir) / name).write_bytes(b"x")
    return str(local_dir)


def test_download_model_success_then_skips(calls, tmp_path):
    calls.effect = write_model_files
    dest = download.download_model("fishaudio/openaudio-s1-mini", "main", tmp_path / "ckpt")
    assert dest == tmp_path / "ckpt" and all((dest / f).is_file() for f in download.MODEL_FILES)
    (kw,) = calls.kwargs
    assert kw["repo_id"] == "fishaudio/openaudio-s1-mini" and kw["revision"] == "main"
    assert kw["repo_type"] == "model" and sorted(kw["allow_patterns"]) == sorted(download.MODEL_FILES)
    assert kw["token"] is None  # huggingface_hub reads HF_TOKEN from the environment itself
    download.download_model("fishaudio/openaudio-s1-mini", "main", tmp_path / "ckpt")
    assert len(calls.kwargs) == 1, "a finished download is not repeated"
    download.download_model("fishaudio/openaudio-s1-mini", "0" * 40, tmp_path / "ckpt")
    assert len(calls.kwargs) == 2, "another revision is downloaded"


def test_download_model_missing_files_is_an_error(calls, tmp_path):
    calls.effect = lambda local_dir, **_: str(local_dir)
    with pytest.raises(download.DownloadError) as e:
        download.download_model("someone/model", "main", tmp_path / "m")
    assert e.value.kind == "error" and "model.pth" in str(e.value)


@pytest.mark.parametrize(
    "exc, token, kind",
    [
        (hub_error(errors.GatedRepoError, 401), None, "gated"),
        (hub_error(errors.GatedRepoError, 403), FAKE_TOKEN, "gated"),
        (hub_error(errors.RepositoryNotFoundError, 401), None, "gated"),
        (hub_error(errors.RepositoryNotFoundError, 404), FAKE_TOKEN, "error"),
        (hub_error(errors.HfHubHTTPError, 403), FAKE_TOKEN, "gated"),
        (hub_error(errors.HfHubHTTPError, 500), FAKE_TOKEN, "error"),
        (hub_error(errors.RevisionNotFoundError, 404), None, "error"),
        (hub_error(errors.LocalEntryNotFoundError), None, "offline"),
        (ConnectionError("Name or service not known"), None, "offline"),
        (TimeoutError("timed out"), FAKE_TOKEN, "offline"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_hub_errors_map_to_one_message(calls, tmp_path, monkeypatch, exc, token, kind):
    if token:
        monkeypatch.setenv("HF_TOKEN", token)

    def refuse(**_):
        raise exc

    calls.effect = refuse
    with pytest.raises(download.DownloadError) as e:
        download.download_model("fishaudio/openaudio-s1-mini", "main", tmp_path / "m")
    assert e.value.kind == kind
    message = str(e.value)
    assert FAKE_TOKEN not in message
    if kind == "gated":
        assert "https://huggingface.co/fishaudio/openaudio-s1-mini" in message
        assert "export HF_TOKEN=" in message and "bash setup.sh" in message and "launch parameter" in message
        assert ("refused the token" in message) == bool(token)
    if kind == "offline":
        assert message.startswith("offline: using demo mode")


def test_main_exit_codes_and_messages(calls, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    dest = str(tmp_path / "m")
    calls.effect = lambda **_: (_ for _ in ()).throw(hub_error(errors.GatedRepoError, 403))
    assert download.main(["model", "--dest", dest]) == 2
    err = capsys.readouterr().err
    assert "accept the licence" in err and FAKE_TOKEN not in err
    calls.effect = lambda **_: (_ for _ in ()).throw(ConnectionError("down"))
    assert download.main(["model", "--dest", dest]) == 3
    assert "offline: using demo mode" in capsys.readouterr().err
    calls.effect = write_model_files
    assert download.main(["model", "--dest", dest]) == 0


def test_real_hub_client_offline_is_reported_as_offline(tmp_path):
    """No mock: huggingface_hub itself with HF_HUB_OFFLINE=1 (it reads that at import, hence a subprocess)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": FAKE_TOKEN}
    result = subprocess.run(
        [sys.executable, "-m", "tts_lib.launch.download", "model", "--dest", str(tmp_path / "m")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "offline: using demo mode" in result.stderr and FAKE_TOKEN not in result.stdout + result.stderr


def test_fleurs_download_converts_to_jsonl_that_ingest_reads(calls, tmp_path):
    def fake(local_dir, allow_patterns, **_):
        write_fleurs(Path(local_dir))
        return str(local_dir)

    calls.effect = fake
    dest = download.download_dataset("google/fleurs", "main", tmp_path / "fleurs_fi_fi", "fi_fi")
    (kw,) = calls.kwargs
    assert kw["repo_type"] == "dataset" and kw["repo_id"] == "google/fleurs"
    assert sorted(kw["allow_patterns"]) == sorted(
        ["data/fi_fi/train.tsv", "data/fi_fi/audio/train.tar.gz", "data/fi_fi/dev.tsv", "data/fi_fi/audio/dev.tar.gz"]
    )
    result = ingest(dest)
    assert result.format == "jsonl"
    assert len(result.items) == 4  # the rows without audio are left out
    assert {i.text for i in result.items} == {"Hyvää päivää 0.", "Hyvää päivää 1."}
    assert {i.speaker for i in result.items} == {"fleurs_fi_fi"}
    assert all(i.duration and abs(i.duration - 0.5) < 0.01 for i in result.items)
    download.download_dataset("google/fleurs", "main", tmp_path / "fleurs_fi_fi", "fi_fi")
    assert len(calls.kwargs) == 1, "a finished download is not repeated"


def test_fleurs_archive_cannot_write_outside_dest(tmp_path):
    write_fleurs(tmp_path / "hub", splits=("train",), extra_member=("../../escape.wav", wav_bytes()))
    download.fleurs_to_jsonl(tmp_path / "hub" / "data" / "fi_fi", tmp_path / "out", "fi_fi", ("train",))
    assert not list(tmp_path.glob("escape.wav")) and not list((tmp_path / "hub").rglob("escape.wav"))
    assert (tmp_path / "out" / "audio" / "train" / "escape.wav").is_file()  # kept, under its own name only
    rows = [json.loads(line) for line in (tmp_path / "out" / "fi_fi.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["train/1000", "train/1001"]


def test_other_dataset_is_downloaded_as_it_is(calls, tmp_path):
    calls.effect = lambda local_dir, **_: str(local_dir)
    download.download_dataset("someone/finnish-tts", "main", tmp_path / "d", config=None)
    (kw,) = calls.kwargs
    assert kw["allow_patterns"] == download.OTHER_DATASET_PATTERNS and kw["local_dir"] == tmp_path / "d"


def test_metric_models_go_to_the_hub_cache_and_failures_say_why(calls, tmp_path):
    from tts_lib.listening.quality_metrics import ASR_MODEL, SPEAKER_MODEL

    calls.effect = lambda **kw: str(tmp_path)
    assert download.download_metric_models() == [ASR_MODEL, SPEAKER_MODEL]
    assert [c["repo_id"] for c in calls.kwargs] == [ASR_MODEL, SPEAKER_MODEL]
    assert all("local_dir" not in c for c in calls.kwargs)  # the cache, where transformers looks them up

    def offline(**kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no connection")

    calls.effect = offline
    with pytest.raises(download.DownloadError) as e:
        download.download_metric_models()
    assert e.value.kind == "offline"
