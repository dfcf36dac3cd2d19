"""Training sequences for the dual-AR model, laid out exactly as upstream inference prompts.

One utterance becomes one sequence, never cut in half:

    <|interleave|> <|speaker:0|> TEXT  SEM_1 ... SEM_F  <|im_end|>

The prefix is built by `generate.build_prompt`, the very function generation uses, followed by the
frames generation would produce: the model is trained on exactly what inference shows it.
(Upstream's fine-tuning script uses a different, chat-style prompt; we follow inference, which
is where the fine-tuned model is used.) Row 0 holds token ids, rows 1..num_codebooks hold the
frame's codes at semantic positions and 0 elsewhere.

Supervised: every semantic token and the `<|im_end|>` after them (slow head), and every codebook of
every frame (fast head). Everything else is label -100.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tts_lib.models.fish_speech.generate import build_prompt
from tts_lib.models.fish_speech.tokenizer import IM_END, FishTokenizer

IGNORE = -100


@dataclass
class Sample:
    tokens: Tensor  # (1 + num_codebooks, T) long: the model's input, already shifted
    labels: Tensor  # (T,) long: next token id at supervised positions, IGNORE elsewhere
    codes: Tensor  # (num_codebooks, T) long: next frame's codes where labels is semantic, 0 elsewhere

    @property
    def length(self) -> int:
        """Positions T: what the sampler's token budget counts."""
        return self.tokens.shape[1]


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
    prompt = build_prompt(tokenizer, text, num_codebooks=num_codebooks)  # (1 + nc, P)
    frame_rows = torch.cat([codes[:1].long() + semantic_begin, codes.long()])  # (1 + nc, F)
    end = torch.zeros(1 + num_codebooks, 1, dtype=torch.long)
    end[0, 0] = tokenizer.special_tokens[IM_END]
    full = torch.cat([prompt, frame_rows, end], dim=1)  # (1 + nc, P + F + 1)

    labels = torch.full((full.shape[1],), IGNORE, dtype=torch.long)
    labels[prompt.shape[1] :] = full[0, prompt.shape[1] :]  # the semantic tokens and the end token
    # Next-token prediction: position t's output is scored against token t + 1.
    return Sample(tokens=full[:, :-1], labels=labels[1:], codes=full[1:, 1:])


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
