import pytest
import torch

from tts_lib.models.fish_speech.generate import build_prompt
from tts_lib.models.fish_speech.samples import IGNORE, build_sample, collate
from tts_lib.models.fish_speech.tokenizer import FishTokenizer


@pytest.fixture
def tok(tokenizer_dir):
    return FishTokenizer.from_dir(tokenizer_dir)


def test_sequence_layout_matches_upstream_inference(tok):
    codes = torch.tensor([[3, 7, 1], [5, 0, 2]])  # (num_codebooks=2, frames=3)
    s = build_sample(tok, "hello", codes)
    text_ids = build_prompt(tok, "hello", num_codebooks=2)[0].tolist()
    assert text_ids == tok.encode("<|interleave|><|speaker:0|>hello")  # not specials in this tokenizer
    sem = tok.semantic_ids[0]
    im_end = tok.token_id("<|im_end|>")
    full_row0 = text_ids + [sem + 3, sem + 7, sem + 1, im_end]
    assert s.tokens.shape == (3, len(full_row0) - 1)
    assert s.tokens[0].tolist() == full_row0[:-1]  # the input is the sequence without its last token
    n = len(text_ids)
    assert s.tokens[1:, n:].tolist() == [[3, 7, 1], [5, 0, 2]]  # codes beside their semantic tokens...
    assert s.tokens[1:, :n].abs().sum() == 0  # ...and 0 under text


def test_labels_supervise_semantic_tokens_and_the_end(tok):
    codes = torch.tensor([[3, 7, 1], [5, 0, 2]])
    s = build_sample(tok, "hello", codes)
    sem, im_end = tok.semantic_ids[0], tok.token_id("<|im_end|>")
    supervised = s.labels[s.labels != IGNORE].tolist()
    assert supervised == [sem + 3, sem + 7, sem + 1, im_end]
    # The position before each semantic token carries that frame's codes for the fast head.
    at = (s.labels >= sem).nonzero().flatten()
    assert s.codes[:, at].T.tolist() == [[3, 5], [7, 0], [1, 2]]


def test_codes_that_do_not_fit_the_tokenizer_are_refused(tok):
    with pytest.raises(ValueError, match="does not fit the tokenizer's 16 semantic tokens"):
        build_sample(tok, "hello", torch.tensor([[16, 1], [0, 0]]))
    with pytest.raises(ValueError, match="zero codec frames"):
        build_sample(tok, "hello", torch.zeros(2, 0, dtype=torch.long))


def test_collate_right_pads_with_ignored_labels(tok):
    a = build_sample(tok, "hello", torch.tensor([[1, 2], [3, 4]]))
    b = build_sample(tok, "hello world hello", torch.tensor([[1, 2, 3, 4], [0, 0, 0, 0]]))
    batch = collate([a, b])
    longest = b.tokens.shape[1]
    assert batch["tokens"].shape == (2, 3, longest) and batch["labels"].shape == (2, longest)
    n = a.tokens.shape[1]
    assert torch.equal(batch["tokens"][0, :, :n], a.tokens) and batch["tokens"][0, :, n:].abs().sum() == 0
    assert (batch["labels"][0, n:] == IGNORE).all() and torch.equal(batch["labels"][1], b.labels)


def test_control_strings_become_special_ids_when_the_tokenizer_has_them():
    from tts_lib.models.fish_speech.tiny import tiny_tokenizer

    tok = tiny_tokenizer(num_semantic=8)
    s = build_sample(tok, "moi", torch.tensor([[1, 2]]))
    assert s.tokens[0, :2].tolist() == [tok.token_id("<|interleave|>"), tok.token_id("<|speaker:0|>")]
