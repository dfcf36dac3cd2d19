"""Speech generation with the dual-AR model: prompt layout, sampling, and the KV-cached decode loop.

Follows upstream's inference (`decode_one_token_ar`, `decode_n_tokens`, `logits_to_probs` in
fish-speech 0.1.0): per frame the slow head samples the next token; a semantic token `<|semantic:N|>`
gives code 0 = N, `<|im_end|>` ends the utterance. The fast transformer then reads the slow hidden
state at position 0 (its output there is unused) and code k-1 at position k to sample code k.
Each sample applies, in upstream's order: repetition penalty over the last `window` frames, top-p
on the untempered logits, then temperature. Where we differ from upstream on purpose:
- `constrain_to_semantic` (default on) lets the slow head pick only semantic tokens or `<|im_end|>`;
  upstream samples the whole vocabulary and turns a text token into code 0.
- the slow head's repetition penalty looks at the previous frames' semantic tokens; upstream
  indexes a column of its window there (`previous_tokens[:, 0]`) and so penalises a mix of one
  frame's token and codes; its window also starts as 16 zero frames, we use only real frames.
- when `max_new_tokens` is reached without `<|im_end|>`, every frame is returned (upstream drops the
  last one, assuming it is the end token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from tts_lib.models.fish_speech.lm import FishSpeechLM

INTERLEAVE = "<|interleave|>"
SPEAKER = "<|speaker:0|>"
IM_END = "<|im_end|>"


def _control(tokenizer: Any, text: str) -> list[int]:
    """A control string: its special id if the tokenizer has it as a special token, else its BPE
    pieces (upstream's encode resolves special-token strings the same way)."""
    return [tokenizer.special_tokens[text]] if text in tokenizer.special_tokens else tokenizer.encode(text)


def build_prompt(
    tokenizer: Any, text: str, *, num_codebooks: int, references: Sequence[tuple[str, Tensor]] = ()
) -> Tensor:
    """The inference prompt (1 + num_codebooks, T) long, laid out as upstream's `generate_long`
    (`ContentSequence(modality="interleave")`, one speaker):

        <|interleave|>
        per reference:  <|speaker:0|> REFERENCE_TEXT <|semantic:c0_1|> ... <|semantic:c0_F|> <|im_end|>
        <|speaker:0|> TEXT

    Generation continues right after TEXT with the new frames and ends with `<|im_end|>`.
    `references` are (transcript, codes (num_codebooks, F)) pairs of a voice to clone; their codes
    sit in rows 1.. beside their semantic tokens, rows 1.. are 0 under text. `tokenizer` needs
    `special_tokens` (str -> id), `semantic_ids` and `encode(text)`; TEXT is encoded as plain text.
    """
    semantic_begin, n_semantic = tokenizer.semantic_ids[0], len(tokenizer.semantic_ids)
    pieces: list[Tensor] = []

    def add_text(ids: list[int]) -> None:
        rows = torch.zeros(1 + num_codebooks, len(ids), dtype=torch.long)
        rows[0] = torch.tensor(ids, dtype=torch.long)
        pieces.append(rows)

    add_text(_control(tokenizer, INTERLEAVE))
    for ref_text, codes in references:
        if codes.ndim != 2 or codes.shape[0] != num_codebooks:
            raise ValueError(f"reference codes: expected ({num_codebooks}, frames), found {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes[0].max()) >= n_semantic):
            raise ValueError(
                f"reference codes: expected codes 0..{n_semantic - 1} in row 0, found {int(codes.min())}.."
                f"{int(codes[0].max())}: codes from another codec?"
            )
        add_text(_control(tokenizer, SPEAKER) + tokenizer.encode(ref_text))
        pieces.append(torch.cat([codes[:1].long() + semantic_begin, codes.long()]))
        add_text([tokenizer.special_tokens[IM_END]])
    add_text(_control(tokenizer, SPEAKER) + tokenizer.encode(text))
    return torch.cat(pieces, dim=1)


def _sample(
    logits: Tensor,
    previous: Tensor,
    *,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
    generator: torch.Generator,
) -> int:
    """Sample one id from float logits (V,); `previous` (W,) are recent ids to penalise."""
    logits = logits.clone()
    if previous.numel() and repetition_penalty != 1.0:
        score = logits.gather(0, previous)
        logits.scatter_(0, previous, torch.where(score < 0, score * repetition_penalty, score / repetition_penalty))
    # Top-p is decided on the untempered distribution; the token that crosses top_p is dropped too
    # (only the most likely token is always kept): upstream's rule.
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    drop_sorted = cumulative > top_p
    drop_sorted[0] = False
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    logits = logits.masked_fill(drop, float("-inf")) / max(temperature, 1e-5)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def generate(
    model: FishSpeechLM,
    prompt_tokens: Tensor,
    *,
    max_new_tokens: int,
    im_end_id: int,
    temperature: float = 0.7,
    top_p: float = 0.8,
    repetition_penalty: float = 1.1,
    semantic_begin_id: int | None = None,
    semantic_end_id: int | None = None,
    seed: int | None = None,
    constrain_to_semantic: bool = True,
    residual_codebook_size: int | None = 1024,
    window: int = 16,
) -> Tensor:
    """Continue `prompt_tokens` (1 + num_codebooks, T) with up to max_new_tokens frames; returns
    codes (num_codebooks, T_new) long, without the end token.

    `semantic_*_id` default to the model's (given ones must agree with it). `seed` makes the result
    reproducible (a private torch.Generator; the global RNG is untouched). Codes 1..n-1 are sampled
    from the first `residual_codebook_size` entries: upstream hard-codes 1024, the size of the S1
    codec's residual codebooks (its first codebook has 4096); None samples all codebook_size."""
    c = model.config
    begin = model.semantic_begin_id if semantic_begin_id is None else semantic_begin_id
    end = model.semantic_end_id if semantic_end_id is None else semantic_end_id
    if (begin, end) != (model.semantic_begin_id, model.semantic_end_id):
        raise ValueError(
            f"semantic ids {begin}..{end} disagree with the model's {model.semantic_begin_id}..{model.semantic_end_id}"
        )
    if prompt_tokens.ndim != 2 or prompt_tokens.shape[0] != 1 + c.num_codebooks:
        raise ValueError(f"prompt_tokens: expected (1 + {c.num_codebooks}, T), found {tuple(prompt_tokens.shape)}")
    length = prompt_tokens.shape[1]
    if length >= c.max_seq_len:
        raise ValueError(f"the prompt has {length} positions, the model's max_seq_len is {c.max_seq_len}")
    max_new_tokens = min(max_new_tokens, c.max_seq_len - length)
    device = model.embeddings.weight.device
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    settings = dict(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, generator=generator)
    code_limit = c.codebook_size if residual_codebook_size is None else min(residual_codebook_size, c.codebook_size)

    slow_mask = torch.zeros(c.vocab_size, device=device)
    if constrain_to_semantic:
        slow_mask.fill_(float("-inf"))
        slow_mask[begin : end + 1] = 0
        slow_mask[im_end_id] = 0

    was_training = model.training
    model.eval()
    try:
        caches = model.new_caches(length + max_new_tokens)
        logits, hidden = model.step_slow(prompt_tokens[None].to(device), caches, 0)
        past = torch.zeros(1 + c.num_codebooks, 0, dtype=torch.long, device=device)  # rows: token id, codes
        for step in range(max_new_tokens):
            recent = past[:, -window:] if window > 0 else past[:, :0]  # (1 + nc, <= window)
            token = _sample(logits[0] + slow_mask, recent[0], **settings)
            if token == im_end_id:
                break
            codes = [token - begin if begin <= token <= end else 0]
            model.step_fast(model.fast_project_in(hidden), caches, 0)
            for k in range(1, c.num_codebooks):
                embedded = model.fast_embeddings(torch.tensor([codes[-1]], device=device))
                fast_logits = model.step_fast(embedded, caches, k)[0, :code_limit]
                codes.append(_sample(fast_logits, recent[k + 1], **settings))
            frame = torch.tensor([token, *codes], dtype=torch.long, device=device)
            past = torch.cat([past, frame[:, None]], dim=1)
            if step + 1 < max_new_tokens:
                logits, hidden = model.step_slow(frame[None, :, None], caches, length + step)
    finally:
        model.train(was_training)
    return past[1:]
