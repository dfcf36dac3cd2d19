"""Fish Speech's text tokenizer: a tiktoken BPE file plus special tokens appended after its ranks.

A checkpoint folder holds `tokenizer.tiktoken` (one "<base64 token> <rank>" per line; "=" stands
for the empty token) and `special_tokens.json` (token -> id, or a list of tokens). Upstream assigns
special ids by order, starting right after the BPE ranks, whatever ids the JSON states; we do the
same and refuse a file whose stated ids disagree. Semantic tokens `<|semantic:N|>` are specials
with contiguous ids. Files read from disk are saved back byte for byte.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import tiktoken

from tts_lib.common.fileio import atomic_write_bytes

BPE_FILE = "tokenizer.tiktoken"
SPECIALS_FILE = "special_tokens.json"
TOKENIZER_FILES = (BPE_FILE, SPECIALS_FILE)
IM_START, IM_END, VOICE, TEXT = "<|im_start|>", "<|im_end|>", "<|voice|>", "<|text|>"
INTERLEAVE = "<|interleave|>"

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


def read_ranks(path: str | Path, data: bytes | None = None) -> dict[bytes, int]:
    text = (data if data is not None else Path(path).read_bytes()).decode("utf-8")
    ranks = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(f"{path}:{lineno}: expected '<base64 token> <rank>', found {line[:80]!r}")
        token = b"" if parts[0] == "=" else base64.b64decode(parts[0])
        ranks[token] = int(parts[1])
    return ranks


class FishTokenizer:
    def __init__(self, ranks: dict[bytes, int], special_tokens: list[str], name: str = "fish"):
        self.ranks = ranks
        self.special_tokens = {token: len(ranks) + i for i, token in enumerate(special_tokens)}
        self.encoding = tiktoken.Encoding(
            name=name, pat_str=FISH_PATTERN, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )
        semantic = sorted(
            (int(m.group(1)), i) for t, i in self.special_tokens.items() if (m := SEMANTIC_RE.fullmatch(t))
        )
        self.semantic_ids = [i for _, i in semantic]  # token id of <|semantic:0|>, <|semantic:1|>, ...
        if self.semantic_ids and self.semantic_ids != list(range(self.semantic_ids[0], self.semantic_ids[-1] + 1)):
            raise ValueError("semantic tokens must have contiguous ids <|semantic:0|> .. <|semantic:N|>")
        self._files: dict[str, bytes] = {}  # original bytes, so saving is byte-identical

    @classmethod
    def from_dir(cls, folder: str | Path) -> FishTokenizer:
        folder = Path(folder)
        bpe, specials = folder / BPE_FILE, folder / SPECIALS_FILE
        for f in (bpe, specials):
            if not f.is_file():
                has = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no such folder"
                raise FileNotFoundError(
                    f"{f} not found: a Fish Speech checkpoint folder has {BPE_FILE} and {SPECIALS_FILE}; "
                    f"{folder} has {has}"
                )
        files = {BPE_FILE: bpe.read_bytes(), SPECIALS_FILE: specials.read_bytes()}
        ranks = read_ranks(bpe, files[BPE_FILE])
        try:
            raw = json.loads(files[SPECIALS_FILE].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{specials}: expected a JSON object of token -> id, could not parse it ({e})") from e
        if not isinstance(raw, dict | list):
            raise ValueError(f"{specials}: expected a JSON object of token -> id, found {type(raw).__name__}")
        tokens = list(raw)
        if isinstance(raw, dict):
            for i, (token, stated) in enumerate(raw.items()):
                if stated != len(ranks) + i:
                    raise ValueError(
                        f"{specials}: {token!r} is stated as id {stated}, but special ids follow the "
                        f"{len(ranks)} BPE ranks in file order, which gives {len(ranks) + i}"
                    )
        tokenizer = cls(ranks, tokens, name=folder.name)
        tokenizer._files = files
        return tokenizer

    def save_pretrained(self, folder: str | Path) -> None:
        """Write both files; a tokenizer read from disk is written back byte for byte."""
        folder = Path(folder)
        files = self._files or {
            BPE_FILE: "".join(f"{base64.b64encode(t).decode() or '='} {r}\n" for t, r in self.ranks.items()).encode(),
            SPECIALS_FILE: json.dumps(self.special_tokens, indent=2, ensure_ascii=False).encode(),
        }
        for name, data in files.items():
            atomic_write_bytes(folder / name, data)

    @property
    def vocab_size(self) -> int:
        """Ids in use: BPE ranks plus special tokens (the model's vocab_size may be larger)."""
        return len(self.ranks) + len(self.special_tokens)

    def token_id(self, token: str) -> int:
        if token not in self.special_tokens:
            raise KeyError(f"{token!r} is not a special token of this tokenizer")
        return self.special_tokens[token]

    def encode(self, text: str) -> list[int]:
        """Plain text to ids; special-token strings inside `text` are encoded as ordinary text."""
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)
