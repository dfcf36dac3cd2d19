"""python scripts/make_demo_data.py [--out data/demo] [--overwrite]

Regenerates the synthetic demo dataset with the espeak-ng binary: two Finnish speakers and a few
Amharic utterances in Ethiopic script, written as 44.1 kHz mono 16-bit FLAC in Fish Speech layout
(<out>/<speaker>/<name>.flac next to <name>.lab). The sentences were written for this project.
Same espeak-ng version in, same files out: no randomness anywhere.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from tts_lib.common.fileio import atomic_write_bytes, atomic_write_text

SAMPLE_RATE = 44100  # the S1-mini codec rate, so nothing is upsampled at training time
PEAK = 10 ** (-3 / 20)  # -3 dBFS leaves headroom for the resampler's overshoot in later steps
PAD_S = 0.1  # espeak-ng appends ~0.3-0.5 s of silence; trimmed to this to keep the set small
GATE_DB = -45  # relative to the peak; quieter edges count as silence

FI_FEMALE = [
    "Hyvää huomenta!",
    "Tänään on aurinkoinen päivä.",
    "Huomenna sataa vettä koko päivän.",
    "Juna lähtee Helsingistä kello kahdeksan.",
    "Matka Tampereelle kestää noin kaksi tuntia.",
    "Ostin kaupasta maitoa, leipää ja kolme omenaa.",
    "Bussilippu maksaa 3 euroa.",
    "Maanantaina ja tiistaina olen töissä.",
    "Ystäväni Åke muutti Tukholmaan viime vuonna.",
    "Kiitos, nähdään ensi viikolla!",
    "Talvella lämpötila voi laskea jopa kolmeenkymmeneen asteeseen pakkasta.",
    "Kesälomalla matkustimme junalla Rovaniemelle, ja siellä aurinko paistoi melkein koko yön, "
    "joten nukuimme vain muutaman tunnin.",
    "Vuonna 2024 kävimme Ahvenanmaalla kaksi kertaa.",
    "Söin aamiaiseksi puuroa ja join kupin kahvia.",
    "Missä on lähin apteekki?",
]

FI_MALE = [
    "Mitä kuuluu?",
    "Tuuli on tänään kova ja kylmä.",
    "Lauantaina menemme mökille järven rannalle.",
    "Lentokone laskeutuu Ouluun kello 17.",
    "Yksi, kaksi, kolme, neljä, viisi, kuusi, seitsemän.",
    "Huoneessa on 12 tuolia ja 2 pöytää.",
    "Syksyllä lehdet putoavat puista.",
    "Keskiviikkona on tärkeä kokous toimistolla.",
    "Voisitteko puhua vähän hitaammin?",
    "Pyöräilen töihin joka aamu, jos ei sada.",
    "Perjantai-iltana katsomme elokuvan ystävien kanssa.",
    "Åbo on Turun ruotsinkielinen nimi.",
    "Kun lumi sulaa keväällä, joet tulvivat ja linnut palaavat etelästä takaisin pohjoiseen "
    "pesimään pitkän talven jälkeen.",
    "Asun talossa numero 45 toisessa kerroksessa.",
    "Hyvää yötä ja kauniita unia.",
]

AM_SPEAKER = [
    "ሰላም ነህ? እኔ ደህና ነኝ።",  # Hello, how are you? I am fine.
    "ዛሬ የአየሩ ሁኔታ ጥሩ ነው።",  # The weather is good today.
    "ነገ ወደ አዲስ አበባ እሄዳለሁ።",  # Tomorrow I am going to Addis Ababa.
    "ቡና መጠጣት እወዳለሁ።",  # I like drinking coffee.
    "ዋጋው 50 ብር ነው።",  # The price is 50 birr.
]

# speaker folder -> (espeak-ng voice, pitch 0-99, words per minute, sentences)
SPEAKERS = {
    "fi_female": ("fi+f3", 70, 155, FI_FEMALE),
    "fi_male": ("fi+m3", 30, 140, FI_MALE),
    "am_speaker": ("am", 45, 145, AM_SPEAKER),
}

README = """# Demo dataset (synthetic)

Made by `python scripts/make_demo_data.py --out data/demo --overwrite`, which regenerates every
file here, this README included. The audio is espeak-ng formant synthesis, so it sounds robotic.

It exists so the offline demo (`python -m tts_lib demo`) and the test suite have something to
train and validate on without downloads. It is not meant to improve any model's quality.

## Layout

Fish Speech layout, one folder per speaker, `<name>.flac` (44.1 kHz mono, 16-bit) next to
`<name>.lab` (the UTF-8 transcript):

{table}
Finnish sentences mix numbers written as words and as digits (espeak-ng reads the digits out)
and include the letters ä, ö and å. The Amharic sentences are in Ethiopic script.

## Licence

The sentences were written for this project; the audio is espeak-ng output of those sentences.
The data may be used freely, for any purpose, without attribution.
"""


def synthesize(text: str, voice: str, pitch: int, speed: int) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        # Text goes in on stdin so that no sentence can be mistaken for an option; -b 1 says UTF-8.
        cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-b", "1", "-w", str(wav)]
        subprocess.run(cmd, input=text.encode("utf-8"), check=True, capture_output=True)
        audio, rate = sf.read(wav, dtype="float64", always_2d=True)
    return audio.mean(axis=1), rate


def trim(audio: np.ndarray, rate: int) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > np.abs(audio).max() * 10 ** (GATE_DB / 20))
    if loud.size == 0:
        raise ValueError("espeak-ng produced silence")
    pad = int(PAD_S * rate)
    return audio[max(loud[0] - pad, 0) : loud[-1] + pad + 1]


def render(text: str, voice: str, pitch: int, speed: int) -> bytes:
    audio, rate = synthesize(text, voice, pitch, speed)
    audio = soxr.resample(trim(audio, rate), rate, SAMPLE_RATE)
    audio = audio / np.abs(audio).max() * PEAK
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    args = ap.parse_args(argv)
    out: Path = args.out

    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is not on PATH (Debian/Ubuntu: apt-get install espeak-ng)")
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            sys.exit(f"{out} is not empty; pass --overwrite to replace it")
        # Remove everything so no file from an older sentence list survives the rebuild.
        shutil.rmtree(out)

    rows = []
    for speaker, (voice, pitch, speed, sentences) in SPEAKERS.items():
        durations = []
        for i, text in enumerate(sentences, start=1):
            name = out / speaker / f"{speaker}_{i:03d}"
            flac = render(text, voice, pitch, speed)
            atomic_write_bytes(name.with_suffix(".flac"), flac)
            atomic_write_text(name.with_suffix(".lab"), text + "\n")
            durations.append(sf.info(io.BytesIO(flac)).duration)
        rows.append((speaker, voice, len(sentences), min(durations), max(durations), sum(durations)))

    header = "| speaker | espeak-ng voice | utterances | seconds (min-max) | total s |"
    table = [header, "|---|---|---|---|---|"]
    table += [f"| `{s}` | `{v}` | {n} | {lo:.1f}-{hi:.1f} | {tot:.1f} |" for s, v, n, lo, hi, tot in rows]
    atomic_write_text(out / "README.md", README.format(table="\n".join(table) + "\n"))
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
