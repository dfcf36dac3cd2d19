"""Training sequences for the dual-AR model, laid out exactly as upstream inference prompts.

One utterance becomes one sequence, never cut in half:

    <|interleave|> <|speaker:0|> TEXT  SEM_1 ... SEM_F  <|im_end|>

which is what upstream's inference (`ContentSequence(modality="interleave")` with one speaker turn)
feeds the model before it generates the semantic tokens; training on that layout means the model
is trained on what inference will show it. (Upstream's fine-tuning script uses a different,
chat-style prompt; we follow inference, which is where the fine-tuned model is used.) Row 0 holds
token ids, rows 1..num_codebooks hold the frame's codes at semantic positions and 0 elsewhere.

Supervised: every semantic token and the `<|im_end|>` after them (slow head), and every codebook of
every frame (fast head). Everything else is label -100.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tts_lib.models.fish_speech.tokenizer import IM_END, INTERLEAVE, FishTokenizer

IGNORE = -100
SPEAKER_TURN = "<|speaker:0|>"


@dataclass
class Sample:
    tokens: Tensor  # (1 + num_codebooks, T) long: the model's input, already shifted
    labels: Tensor  # (T,) long: next token id at supervised positions, IGNORE elsewhere
    codes: Tensor  # (num_codebooks, T) long: next frame's codes where labels is semantic, 0 elsewhere


def special_or_text(tokenizer: FishTokenizer, text: str) -> list[int]:
    """A control string as upstream encodes it: its special id if it is one, else BPE pieces."""
    return [tokenizer.special_tokens[text]] if text in tokenizer.special_tokens else tokenizer.encode(text)


def prompt_prefix(tokenizer: FishTokenizer) -> list[int]:
    return special_or_text(tokenizer, INTERLEAVE) + special_or_text(tokenizer, SPEAKER_TURN)


def build_sample(tokenizer: FishTokenizer, text: str, codes: Tensor) -> Sample:
    """One training sequence from one utterance; `codes` is (num_codebooks, F) from the codec."""
    num_codebooks, frames = codes.shape
    semantic_begin = tokenizer.semantic_ids[0]
    if frames == 0:
        raise ValueError("an utterance with zero codec frames cannot be trained on")
    if int(codes[0].max()) >= len(tokenizer.semantic_ids) or int(codes.min()) < 0:
        raise ValueError(
            f"codes range {int(codes.min())}..{int(codes.max())} does not fit the tokenizer's "
            f"{len(tokenizer.semantic_ids)} semantic tokens: codes from another codec?"
        )
    text_ids = prompt_prefix(tokenizer) + tokenizer.encode(text)
    ids = torch.tensor(text_ids + [0] * frames + [tokenizer.special_tokens[IM_END]], dtype=torch.long)
    ids[len(text_ids) : len(text_ids) + frames] = codes[0].long() + semantic_begin
    rows = torch.zeros(num_codebooks, len(ids), dtype=torch.long)
    rows[:, len(text_ids) : len(text_ids) + frames] = codes.long()
    full = torch.cat([ids[None], rows])  # (1 + num_codebooks, T + 1)

    labels = torch.full((len(ids),), IGNORE, dtype=torch.long)
    labels[len(text_ids) :] = ids[len(text_ids) :]  # the semantic tokens and the end token
    # Next-token prediction: position t's output is scored against token t + 1.
    return Sample(tokens=full[:, :-1], labels=labels[1:], codes=rows[:, 1:])


def collate(samples: list[Sample]) -> dict[str, Tensor]:
    """Right-pad to the longest sample. The causal mask keeps real positions from seeing padding,
    and padded positions carry IGNORE labels, so no attention mask is needed."""
    longest = max(s.tokens.shape[1] for s in samples)
    rows = samples[0].tokens.shape[0]
    tokens = torch.zeros(len(samples), rows, longest, dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE, dtype=torch.long)
    codes = torch.zeros(len(samples), rows - 1, longest, dtype=torch.long)
    for b, s in enumerate(samples):
        n = s.tokens.shape[1]
        tokens[b, :, :n], labels[b, :n], codes[b, :, :n] = s.tokens, s.labels, s.codes
    return {"tokens": tokens, "labels": labels, "codes": codes}
