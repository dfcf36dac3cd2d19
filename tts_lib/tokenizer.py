"""Fish Speech's text tokenizer: a tiktoken BPE file plus special tokens appended after its ranks.

A checkpoint folder holds `tokenizer.tiktoken` (one "<base64 token> <rank>" per line; "=" stands
for the empty token) and `special_tokens.json` (token -> id). Semantic tokens `<|semantic:N|>` are
specials; their ids are contiguous.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import tiktoken

# The pre-tokenisation regex of Fish Speech's tokenizer (GPT-4o style, punctuation split off).
# It is part of the format: a different pattern gives different token ids for the same text.
FISH_PATTERN = "|".join(
    [
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
        r"\p{P}",
        r"[^\r\n\p{L}\p{N}]?\p{L}+",
        r"\p{N}",
        r" ?[^\s\p{L}\p{N}]+[\r\n]*",
        r"\s*[\r\n]+",
        r"\s+(\?!\S)",
        r"\s+",
    ]
)
SEMANTIC_RE = re.compile(r"<\|semantic:(\d+)\|>")


def read_ranks(path: str | Path) -> dict[bytes, int]:
    ranks = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(f"{path}:{lineno}: expected '<base64 token> <rank>', found {line[:80]!r}")
        token = b"" if parts[0] == "=" else base64.b64decode(parts[0])
        ranks[token] = int(parts[1])
    return ranks


class FishTokenizer:
    def __init__(self, ranks: dict[bytes, int], special_tokens: dict[str, int], name: str = "fish"):
        self.ranks = ranks
        self.special_tokens = special_tokens
        self.encoding = tiktoken.Encoding(
            name=name, pat_str=FISH_PATTERN, mergeable_ranks=ranks, special_tokens=special_tokens
        )
        semantic = sorted((int(m.group(1)), i) for t, i in special_tokens.items() if (m := SEMANTIC_RE.fullmatch(t)))
        self.semantic_ids = [i for _, i in semantic]  # token id of <|semantic:0|>, <|semantic:1|>, ...

    @classmethod
    def from_dir(cls, folder: str | Path) -> FishTokenizer:
        folder = Path(folder)
        bpe, specials = folder / "tokenizer.tiktoken", folder / "special_tokens.json"
        for f in (bpe, specials):
            if not f.is_file():
                raise FileNotFoundError(
                    f"{f} not found: a Fish Speech checkpoint folder has tokenizer.tiktoken and special_tokens.json"
                )
        ranks = read_ranks(bpe)
        raw = json.loads(specials.read_text(encoding="utf-8"))
        # Older exports list the tokens; their ids then follow the BPE ranks in order.
        special_tokens = raw if isinstance(raw, dict) else {t: len(ranks) + i for i, t in enumerate(raw)}
        return cls(ranks, special_tokens, name=folder.name)

    def encode(self, text: str) -> list[int]:
        """Plain text to ids; special-token strings inside `text` are encoded as ordinary text."""
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)
