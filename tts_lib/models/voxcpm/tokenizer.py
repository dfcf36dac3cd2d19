"""VoxCPM2's text tokenizer: the folder's `tokenizer.json` through transformers' LlamaTokenizerFast, with the
model's one rule on top: a token of two or more CJK ideographs is split into single characters (the model was
trained on one position per Chinese character).

    from tts_lib.models.voxcpm.tokenizer import VoxCPMTokenizer
    ids = VoxCPMTokenizer.from_folder("checkpoints/voxcpm2").encode("Hyvää huomenta")  # no BOS: as upstream
"""

from __future__ import annotations

from pathlib import Path


def is_cjk_word(token: str) -> bool:
    return len(token) >= 2 and all("\u4e00" <= c <= "\u9fff" for c in token)


class VoxCPMTokenizer:
    def __init__(self, base):
        self.base = base
        self.split = {token for token in base.get_vocab() if is_cjk_word(token)}

    @classmethod
    def from_folder(cls, folder: str | Path) -> VoxCPMTokenizer:
        from transformers import LlamaTokenizerFast  # transformers comes with peft

        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{folder / 'tokenizer.json'} not found: a VoxCPM2 folder has its tokenizer there")
        return cls(LlamaTokenizerFast.from_pretrained(str(folder)))

    def tokens(self, text: str) -> list[str]:
        out = []
        for token in self.base.tokenize(text):
            word = token.replace("▁", "")
            out.extend(list(word) if word in self.split else [token])
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added (the sequence builder adds the audio markers)."""
        return self.base.convert_tokens_to_ids(self.tokens(text))

    def save_pretrained(self, folder: str | Path) -> None:
        self.base.save_pretrained(str(folder))
