"""render_versions(models, sentences, out_dir): the same sentences from several model versions, as WAVs and players.

    from tts_lib.listening.players import EVAL_SENTENCES, players_page, render_versions
    from tts_lib.models import load_family

    family = load_family("runs/v1/merged")
    rows = render_versions({"after": (family, family.load_model().eval())}, EVAL_SENTENCES["fi"], "runs/v1/listen")
    Path("runs/v1/listen/players.html").write_text(players_page(rows, "runs/v1/listen"), encoding="utf-8")

Every version speaks every sentence with the same seed, so what differs between two WAVs comes from the
weights. WAVs go to `out_dir/<version>/<k>.wav`; one that exists already is kept (a finished version's
listening is never regenerated), and a version whose WAVs all exist is never even loaded when it is given
as a loader function instead of a (family, model) pair.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from tts_lib.data.audio import load_audio
from tts_lib.models import VoiceReference

# Default test sentences per language: edit freely. Written by a non-native author: a native speaker should review
# them before results are trusted. Each list has the hard cases: a long sentence, numbers as digits, rare letters
# (Finnish å/ä/ö and foreign names; rarer Amharic fidel such as ኧ, ጰ, ፐ, ዠ, ቯ).
EVAL_SENTENCES: dict[str, list[str]] = {
    "fi": [
        "Hyvää huomenta! Tämä on ensimmäinen kokeilu.",
        "Juna lähtee Helsingistä kello 7.45 ja saapuu Ouluun noin 6 tunnin kuluttua, eli 13.30.",
        "Åke ja Mårten ajoivat Ålandista Zürichiin, missä he tapasivat Françoisin ja Škodan insinöörin.",
        "Vaikka sää oli koko viikon sateinen ja tuulinen, päätimme silti lähteä mökille järven rantaan, koska "
        "olimme luvanneet isoäidille, että korjaisimme laiturin ennen juhannusta.",
        "Vuonna 2024 kaupungissa asui 658 457 ihmistä.",
    ],
    "am": [
        "እንደምን አደርክ? ይህ የመጀመሪያው ሙከራ ነው።",
        "ባቡሩ ከአዲስ አበባ በ3 ሰዓት ይነሳል እና 250 ኪሎ ሜትር ይጓዛል።",
        "ፐርሰንቱ በጰንጠቆስጤ ቀን ዠማውን ያየው ኧረ በጣም ብዙ ነበር።",
        "ምንም እንኳን ዝናቡ ሳምንቱን ሙሉ ቢዘንብም፣ ቤተሰባችንን ለመጠየቅ ወደ ገጠር ለመሄድ ወሰንን፣ ምክንያቱም ለአያታችን ከበዓሉ በፊት እንደምንመጣ ቃል ገብተን ነበር።",
        "በ2016 ዓ.ም. ከተማዋ 5,000,000 ነዋሪዎች ነበሯት።",
    ],
}

ModelPair = tuple[Any, torch.nn.Module]  # (family, model)


def read_reference(path: str | Path, transcript: str, family: Any) -> VoiceReference:
    """A voice reference clip from an audio file, mono at the family's sample rate, with its transcript."""
    return VoiceReference(load_audio(path, family.sample_rate), transcript)


def synthesize(
    family: Any,
    model: torch.nn.Module,
    text: str,
    references: Sequence[VoiceReference] = (),
    max_new_tokens: int = 300,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, int]:
    """`text` spoken by `model` -> (float32 wave, sample rate). The codec runs on the model's device unless
    `device` says otherwise; a model that stops at once gives an empty wave."""
    device = device if device is not None else next(model.parameters()).device
    generated = family.generate(model, text, references, max_new_tokens=max_new_tokens, seed=seed)
    return family.decode(generated, device), family.output_sample_rate


def render_versions(
    models: Mapping[str, ModelPair | Callable[[], ModelPair]],
    sentences: Sequence[str],
    out_dir: str | Path,
    seed: int = 0,
    references: Sequence[VoiceReference] = (),
    max_new_tokens: int = 300,
    log: Callable[[str], Any] | None = print,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Each version speaks each sentence -> rows {version, sentence_index, text, wav, seconds}, in version
    order then sentence order. An existing WAV is kept when the `<k>.txt` beside it holds the same sentence
    (unless `overwrite`). A value of `models` may be a function returning (family, model): it is called only
    when one of that version's WAVs has to be made."""
    out_dir = Path(out_dir)
    rows = []
    for version, entry in models.items():
        pair = None
        for k, text in enumerate(sentences):
            path, said = out_dir / version / f"{k}.wav", out_dir / version / f"{k}.txt"
            if not overwrite and path.is_file() and said.is_file() and said.read_text(encoding="utf-8") == text:
                info = sf.info(path)
                seconds, note = info.frames / info.samplerate, " (from an earlier run)"
            else:
                if pair is None:
                    pair = entry() if callable(entry) else entry
                wave, rate = synthesize(*pair, text, references, max_new_tokens=max_new_tokens, seed=seed)
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, wave, rate)
                said.write_text(text, encoding="utf-8")  # after the WAV: a half-written pair is made again
                seconds, note = len(wave) / rate, ""
            rows.append({"version": version, "sentence_index": k, "text": text, "wav": str(path), "seconds": seconds})
            if log:
                log(f"{version} #{k}: {seconds:.1f} s -> {path}{note}")
        del pair  # a loaded model is freed before the next one loads
    return rows


def players_html(rows: Sequence[Mapping[str, Any]], relative_to: str | Path | None = None, embed: bool = False) -> str:
    """An HTML table, one row per sentence and one column per version, a player in every cell.

    embed=True: each player carries its audio (FLAC: lossless, about half a WAV; base64), so the page plays
    wherever it is opened: from disk, downloaded, or in JupyterLab's file browser, whose HTML viewer cannot
    fetch the files beside a page. Otherwise players point at the WAVs: relative to `relative_to` (a notebook
    output: JupyterLab serves them from there, and the saved notebook stays small), else by absolute path.
    Each cell also names its WAV (relative to `relative_to` when given): a link, or with embed=True its path."""
    versions = list(dict.fromkeys(r["version"] for r in rows))
    texts = {r["sentence_index"]: r["text"] for r in rows}
    cells = {(r["sentence_index"], r["version"]): r for r in rows}
    head = "".join(f"<th>{html.escape(v)}</th>" for v in versions)
    lines = [f"<table><tr><th>#</th><th>sentence</th>{head}</tr>"]
    for k in sorted(texts):
        tds = "".join(f"<td>{_cell(cells.get((k, v)), relative_to, embed)}</td>" for v in versions)
        lines.append(f"<tr><td>{k}</td><td>{html.escape(texts[k])}</td>{tds}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def players_page(rows: Sequence[Mapping[str, Any]], folder: str | Path, title: str = "Listening") -> str:
    """players.html for `folder`: a whole page (UTF-8 declared, so Ethiopic and Finnish letters show right
    from disk) with every player embedded; the WAV links are relative to `folder`."""
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        "<style>body{font-family:sans-serif} td,th{padding:4px 8px;border-bottom:1px solid #ddd}</style>"
        f"</head><body>\n<h1>{html.escape(title)}</h1>\n{players_html(rows, folder, embed=True)}\n</body></html>\n"
    )


def _flac_data_uri(path: Path) -> str:
    wave, rate = sf.read(path, dtype="float32")
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="FLAC")
    return "data:audio/flac;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(row: Mapping[str, Any] | None, relative_to: str | Path | None, embed: bool) -> str:
    if row is None:
        return ""
    path = Path(row["wav"])
    link = Path(os.path.relpath(path, relative_to)).as_posix() if relative_to is not None else path.as_posix()
    src = _flac_data_uri(path) if embed else link
    player = f'<audio controls preload="metadata" src="{html.escape(src)}"></audio><br>{row["seconds"]:.1f} s, '
    if embed:  # the file's name, not a link: JupyterLab's HTML viewer refuses requests for files beside the page
        return f"{player}<code>{html.escape(link)}</code>"
    return f'{player}<a href="{html.escape(link)}">wav</a>'
