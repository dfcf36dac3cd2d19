"""How well a tokenizer represents each writing system (script) in the transcripts.

A byte-level BPE can encode any text, but a script it saw little of (Ethiopic in a tokenizer built
mostly from Latin and CJK text) falls apart into 2-3 byte tokens per character. That makes
sequences long and gives the model little to learn from, so validation reports tokens per
character for each script and warns above a threshold.
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass
class ScriptCoverage:
    script: str  # first word of the Unicode character names: LATIN, ETHIOPIC, CYRILLIC, CJK...
    characters: int  # letters of this script in all transcripts
    tokens: int  # tokens those letters became, encoded as runs of the script
    examples: str  # a few distinct characters of the script

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / max(1, self.characters)


def script_of(ch: str) -> str | None:
    """The script of a letter, or None for anything that is not a letter or a mark."""
    if not unicodedata.category(ch).startswith(("L", "M")):
        return None
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else "UNKNOWN"


def script_runs(text: str) -> Iterable[tuple[str, str]]:
    """Yield (script, run) for each maximal run of letters of one script; marks join the run."""
    run, current = [], None
    for ch in text:
        script = script_of(ch)
        if script is not None and unicodedata.category(ch).startswith("M") and current is not None:
            script = current  # combining marks belong to the letter before them
        if script != current and run:
            yield current, "".join(run)
            run = []
        current = script
        if script is not None:
            run.append(ch)
        else:
            current = None
    if run and current is not None:
        yield current, "".join(run)


def coverage_by_script(texts: Iterable[str], encoder: Encoder) -> list[ScriptCoverage]:
    """Tokens per character for every script in `texts`, most frequent script first."""
    chars: dict[str, int] = defaultdict(int)
    tokens: dict[str, int] = defaultdict(int)
    seen: dict[str, dict[str, None]] = defaultdict(dict)
    cache: dict[str, int] = {}
    for text in texts:
        for script, run in script_runs(text):
            if run not in cache:
                cache[run] = len(encoder.encode(run))
            chars[script] += len(run)
            tokens[script] += cache[run]
            for ch in run:
                if len(seen[script]) < 8:
                    seen[script].setdefault(ch)
    rows = [ScriptCoverage(s, chars[s], tokens[s], "".join(seen[s])) for s in chars]
    return sorted(rows, key=lambda r: -r.characters)
