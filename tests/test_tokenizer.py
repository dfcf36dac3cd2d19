import pytest

from tts_lib.tokenizer import FishTokenizer


def test_loads_a_checkpoint_folder(tokenizer_dir):
    tok = FishTokenizer.from_dir(tokenizer_dir)
    ids = tok.encode("hello world, hyvää päivää")
    assert tok.decode(ids) == "hello world, hyvää päivää"
    assert len(tok.encode("hello")) == 1  # the word merges in the fixture are used
    assert tok.encode("<|im_end|>") != [tok.special_tokens["<|im_end|>"]]  # specials stay text
    assert len(tok.semantic_ids) == 16
    assert tok.semantic_ids == list(range(tok.semantic_ids[0], tok.semantic_ids[0] + 16))
    assert tok.semantic_ids[0] == len(tok.ranks) + 6


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.tiktoken"):
        FishTokenizer.from_dir(tmp_path)


def test_bad_rank_line(tokenizer_dir):
    with open(tokenizer_dir / "tokenizer.tiktoken", "a") as f:
        f.write("aGk= notanumber\n")
    with pytest.raises(ValueError, match=r"tokenizer.tiktoken:\d+: expected"):
        FishTokenizer.from_dir(tokenizer_dir)
