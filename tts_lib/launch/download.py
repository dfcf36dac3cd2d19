"""Downloads from the Hugging Face hub: the base model and the default dataset (setup.sh steps 4 and 5).

    python -m tts_lib.launch.download model --repo fishaudio/openaudio-s1-mini --dest checkpoints/s1-mini
    python -m tts_lib.launch.download dataset --repo google/fleurs --config fi_fi --dest data/fleurs_fi_fi
    python -m tts_lib.launch.download metric-models   # Whisper + WavLM for the quality metrics (GPU instances)

The token comes from the environment (HF_TOKEN), read by huggingface_hub itself: it is never an argument
on a command line, never printed and never written anywhere by this module. Every hub failure becomes a
DownloadError with one of three kinds, each with one message that says what to do:

    gated    the repository needs a token and an accepted licence (401/403, gated, or "not found" without a token)
    offline  the hub cannot be reached (no network, DNS, timeouts, HF_HUB_OFFLINE=1)
    error    anything else (a wrong revision or repository name, a missing file, a 5xx)

main() exits with EXIT[kind] so that setup.sh can fall back to demo mode on `gated` and `offline`.

The default dataset is FLEURS (google/fleurs, CC-BY-4.0): read speech, 16 kHz, about 4,000 Finnish
utterances (fi_fi) of many speakers (not identified). Its hub layout is one folder per language,
`data/<config>/<split>.tsv` (no header: id, file_name, raw_transcription, transcription, words,
num_samples, gender) and `data/<config>/audio/<split>.tar.gz` (the .wav files). That layout is not one
tts_lib ingests, so download_dataset converts it to the JSONL format: `<dest>/<config>.jsonl` and
`<dest>/audio/<split>/<file_name>`. Any other dataset repository is downloaded as it is (parquet shards,
LJSpeech, Coqui CSV, JSONL or Fish Speech folders: formats `ingest` detects by itself).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tts_lib.models import published_model, published_models

DEFAULT_MODEL = published_models()[0]  # the family registry's first released checkpoint: OpenAudio S1-mini
MODEL_REPO = DEFAULT_MODEL.repo
# NOT a verified commit: no hash of fishaudio/openaudio-s1-mini could be checked from the build machine (the hub
# is unreachable there). "main" follows the repository; replace it with the 40-hex commit shown on
# https://huggingface.co/fishaudio/openaudio-s1-mini/commits/main to pin the exact weights.
MODEL_REVISION_UNPINNED = "main"
MODEL_FILES = DEFAULT_MODEL.files  # what the default model's folder holds; other released ones list their own
LICENCE_URL = "https://huggingface.co/{repo}"

DATASET_REPO = "google/fleurs"  # CC-BY-4.0; derived models may be shared with attribution
DATASET_CONFIG = "fi_fi"
# NOT a verified commit either (see MODEL_REVISION_UNPINNED).
DATASET_REVISION_UNPINNED = "main"
FLEURS_SPLITS = ("train", "dev")  # test stays out: it is FLEURS's benchmark set
OTHER_DATASET_PATTERNS = [
    "*.parquet", "*.jsonl", "*.csv", "*.lab", "*.wav", "*.flac", "*.mp3", "*.ogg", "*.npy", "README.md",
]  # fmt: skip
DONE_FILE = ".download.json"  # written last: its presence (with the same repo and revision) means finished

EXIT = {"ok": 0, "error": 1, "gated": 2, "offline": 3}


@dataclass
class DownloadError(Exception):
    kind: str  # "gated", "offline" or "error"
    message: str

    def __str__(self) -> str:
        return self.message


def gated_message(repo_id: str, has_token: bool) -> str:
    why = (
        "the hub refused the token (401/403): the licence is not accepted for this account, or the token cannot read"
        if has_token
        else "no HF_TOKEN is set"
    )
    return (
        f"{repo_id} is gated on the Hugging Face hub and {why}. To use it:\n"
        f"  1. sign in and accept the licence at {LICENCE_URL.format(repo=repo_id)}\n"
        "  2. create a read token at https://huggingface.co/settings/tokens\n"
        "  3. set it as the launchable's HF_TOKEN launch parameter, or in this shell: export HF_TOKEN=<your token>\n"
        "  4. run again: bash setup.sh\n"
        "Continuing in demo mode (tiny random model, data/demo) until then."
    )


def offline_message(repo_id: str, detail: str = "") -> str:
    why = f": {detail}" if detail else ""
    return f"offline: using demo mode (could not reach the Hugging Face hub for {repo_id}{why})"


def _has_token(token: str | None) -> bool:
    return bool(token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _is_connection_error(exc: BaseException) -> bool:
    """Connection failures of the HTTP clients huggingface_hub has used (httpx now, requests before)."""
    names = {"ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "ConnectionError", "NetworkError"}
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TimeoutError | ConnectionError) or type(exc).__name__ in names:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def classify(exc: BaseException, repo_id: str, token: str | None = None) -> DownloadError:
    """The DownloadError for an exception raised by huggingface_hub."""
    try:
        from huggingface_hub import errors
    except ImportError:  # huggingface_hub before 0.24 kept the error classes in utils
        from huggingface_hub import utils as errors

    has_token = _has_token(token)
    if isinstance(exc, errors.GatedRepoError):
        return DownloadError("gated", gated_message(repo_id, has_token))
    if isinstance(exc, errors.RevisionNotFoundError):
        return DownloadError("error", f"{repo_id}: revision not found ({exc}); check the revision variable")
    if isinstance(exc, errors.RepositoryNotFoundError):
        # The hub answers 401 "not found" for gated and private repositories requested without a token.
        if not has_token:
            return DownloadError("gated", gated_message(repo_id, has_token))
        return DownloadError("error", f"{repo_id}: no such repository, or this token cannot see it")
    if isinstance(exc, errors.LocalEntryNotFoundError) or _is_connection_error(exc):
        detail = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else "no connection"
        return DownloadError("offline", offline_message(repo_id, detail))
    if _status(exc) in (401, 403):
        return DownloadError("gated", gated_message(repo_id, has_token))
    status = _status(exc)
    return DownloadError("error", f"{repo_id}: download failed{f' (HTTP {status})' if status else ''}: {exc}")


def _snapshot(repo_id: str, revision: str, dest: Path, patterns: list[str], token: str | None, repo_type: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            local_dir=dest,
            allow_patterns=patterns,
            token=token,  # None: huggingface_hub reads HF_TOKEN from the environment
        )
    except Exception as exc:  # every hub failure becomes one of three messages
        raise classify(exc, repo_id, token) from exc
    return Path(path)


def _done(dest: Path, record: dict) -> bool:
    try:
        return json.loads((dest / DONE_FILE).read_text(encoding="utf-8")) == record
    except (OSError, ValueError):
        return False


def _mark_done(dest: Path, record: dict) -> None:
    (dest / DONE_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def download_model(
    repo_id: str = MODEL_REPO, revision: str = MODEL_REVISION_UNPINNED, dest: str | Path = "", token: str | None = None
) -> Path:
    """The checkpoint folder `dest` from `repo_id` at `revision`: the files the registry lists for that released
    checkpoint (an unknown repository: the default model's layout); skipped when already there."""
    published = published_model(repo_id) or DEFAULT_MODEL
    patterns = [name for entry in published.files for name in entry.split("|")] + list(published.optional)
    dest = Path(dest or Path("checkpoints") / repo_id.split("/")[-1])
    record = {"repo_id": repo_id, "revision": revision, "repo_type": "model"}

    def absent() -> list[str]:
        return [entry for entry in published.files if not any((dest / f).is_file() for f in entry.split("|"))]

    if _done(dest, record) and not absent():
        print(f"{dest}: {repo_id}@{revision} already downloaded")
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    _snapshot(repo_id, revision, dest, patterns, token, "model")
    missing = absent()
    if missing:
        raise DownloadError(
            "error",
            f"{repo_id}@{revision} has no {', '.join(m.replace('|', ' or ') for m in missing)}: not a complete "
            f"{published.title} folder",
        )
    _mark_done(dest, record)
    print(f"{dest}: {repo_id}@{revision} downloaded")
    return dest


def download_metric_models() -> list[str]:
    """Whisper (ASR) and WavLM (speaker embeddings) into the Hugging Face cache, where the quality metrics
    (tts_lib.listening.quality_metrics) look for them; without them the metrics report says "not available"."""
    from huggingface_hub import snapshot_download

    from tts_lib.listening.quality_metrics import ASR_MODEL, SPEAKER_MODEL

    done = []
    for repo_id in (ASR_MODEL, SPEAKER_MODEL):
        try:  # weights in safetensors only: the same model twice (.bin too) would double the download
            snapshot_download(repo_id=repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
        except Exception as exc:
            raise classify(exc, repo_id) from exc
        done.append(repo_id)
        print(f"{repo_id}: in the Hugging Face cache")
    return done


def is_fleurs(repo_id: str) -> bool:
    return repo_id.split("/")[-1].lower().startswith("fleurs")


def download_dataset(
    repo_id: str = DATASET_REPO,
    revision: str = DATASET_REVISION_UNPINNED,
    dest: str | Path = "",
    config: str | None = DATASET_CONFIG,
    token: str | None = None,
    splits: tuple[str, ...] = FLEURS_SPLITS,
) -> Path:
    """A folder `ingest` reads: FLEURS converted to JSONL, anything else as it is on the hub; skipped when done."""
    dest = Path(dest or Path("data") / "_".join([repo_id.split("/")[-1], *([config] if config else [])]))
    record = {"repo_id": repo_id, "revision": revision, "repo_type": "dataset", "config": config}
    if _done(dest, record):
        print(f"{dest}: {repo_id}@{revision} already downloaded")
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    if is_fleurs(repo_id):
        if not config:
            raise DownloadError("error", f"{repo_id} has one folder per language: give a config such as fi_fi")
        raw = dest / "hub"  # the hub's files as they are, kept so that a re-run converts without downloading
        patterns = [p for s in splits for p in (f"data/{config}/{s}.tsv", f"data/{config}/audio/{s}.tar.gz")]
        _snapshot(repo_id, revision, raw, patterns, token, "dataset")
        rows = fleurs_to_jsonl(raw / "data" / config, dest, config, splits)
        print(f"{dest}: {rows} utterances of {repo_id} ({config}) in {config}.jsonl")
    else:
        patterns = OTHER_DATASET_PATTERNS if not config else [f"*{config}*", "README.md"]
        _snapshot(repo_id, revision, dest, patterns, token, "dataset")
        print(f"{dest}: {repo_id}@{revision} downloaded")
    _mark_done(dest, record)
    return dest


def fleurs_to_jsonl(folder: Path, dest: Path, config: str, splits: tuple[str, ...] = FLEURS_SPLITS) -> int:
    """`<folder>/<split>.tsv` + `<folder>/audio/<split>.tar.gz` -> `<dest>/<config>.jsonl` + `<dest>/audio/<split>/`.

    Only regular .wav members are extracted, each under its own base name: an archive cannot write outside
    `dest`. Rows whose audio is not in the archive are left out and counted in the message.
    """
    lines: list[str] = []
    missing = 0
    for split in splits:
        tsv = folder / f"{split}.tsv"
        archive = folder / "audio" / f"{split}.tar.gz"
        if not tsv.is_file() or not archive.is_file():
            raise DownloadError("error", f"{folder}: expected {tsv.name} and audio/{archive.name} (FLEURS layout)")
        audio_dir = dest / "audio" / split
        audio_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".wav"):
                    target = audio_dir / Path(member.name).name
                    if not target.is_file() or target.stat().st_size != member.size:
                        source = tar.extractfile(member)
                        if source is not None:
                            with source, open(target, "wb") as out:
                                shutil.copyfileobj(source, out)
        for line in tsv.read_text(encoding="utf-8").splitlines():
            fields = line.split("\t")
            if len(fields) < 3 or not fields[1].strip():
                continue
            file_name = Path(fields[1].strip()).name
            if not (audio_dir / file_name).is_file():
                missing += 1
                continue
            row = {
                "id": f"{split}/{Path(file_name).stem}",  # one sentence id is read by several speakers
                "audio": f"audio/{split}/{file_name}",
                "text": fields[2].strip(),  # raw_transcription: cased and punctuated, as a TTS model should read
                "speaker": f"fleurs_{config}",  # FLEURS does not identify its speakers
            }
            lines.append(json.dumps(row, ensure_ascii=False))
    if not lines:
        raise DownloadError("error", f"{folder}: no utterance with its audio found")
    tmp = dest / f"{config}.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(dest / f"{config}.jsonl")
    if missing:
        print(f"{missing} FLEURS rows had no audio in their archive and were left out")
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tts_lib.launch.download", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("model", help="the base model's checkpoint folder (gated: needs HF_TOKEN)")
    p.add_argument("--repo", default=MODEL_REPO)
    p.add_argument("--revision", default=MODEL_REVISION_UNPINNED)
    p.add_argument("--dest", default="", help="default: checkpoints/<repo name>")
    p = sub.add_parser("dataset", help="a dataset folder that `ingest` reads")
    p.add_argument("--repo", default=DATASET_REPO)
    p.add_argument("--revision", default=DATASET_REVISION_UNPINNED)
    p.add_argument("--config", default=DATASET_CONFIG, help="FLEURS language folder (fi_fi); '' for none")
    p.add_argument("--dest", default="", help="default: data/<repo name>_<config>")
    sub.add_parser("metric-models", help="Whisper and WavLM for the quality metrics, into the Hugging Face cache")
    args = parser.parse_args(argv)
    try:
        if args.what == "metric-models":
            download_metric_models()
        elif args.what == "model":
            download_model(args.repo, args.revision, args.dest)
        else:
            download_dataset(args.repo, args.revision, args.dest, args.config or None)
    except DownloadError as e:
        print(e, file=sys.stderr)
        return EXIT[e.kind]
    return EXIT["ok"]


if __name__ == "__main__":
    sys.exit(main())
