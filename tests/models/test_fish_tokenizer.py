import json

import pytest

from tts_lib.models.fish_speech.tokenizer import FishTokenizer


def test_loads_a_checkpoint_folder(tokenizer_dir):
    tok = FishTokenizer.from_dir(tokenizer_dir)
    ids = tok.encode("hello world, hyvää päivää")
    assert tok.decode(ids) == "hello world, hyvää päivää"
    assert len(tok.encode("hello")) == 1  # the word merges in the fixture are used
    assert tok.encode("<|im_end|>") != [tok.token_id("<|im_end|>")]  # specials in text stay text
    assert len(tok.semantic_ids) == 16
    assert tok.semantic_ids == list(range(tok.semantic_ids[0], tok.semantic_ids[0] + 16))
    assert tok.semantic_ids[0] == len(tok.ranks) + 6
    assert tok.vocab_size == len(tok.ranks) + 6 + 16
    with pytest.raises(KeyError, match="not a special token"):
        tok.token_id("<|nope|>")


def test_save_is_byte_identical(tokenizer_dir, tmp_path):
    # Unusual but valid formatting must survive a load/save round trip untouched.
    specials = tokenizer_dir / "special_tokens.json"
    specials.write_text(json.dumps(json.loads(specials.read_text()), indent=4) + "\n\n")
    FishTokenizer.from_dir(tokenizer_dir).save_pretrained(tmp_path / "out")
    for name in ("tokenizer.tiktoken", "special_tokens.json"):
        assert (tmp_path / "out" / name).read_bytes() == (tokenizer_dir / name).read_bytes()


def test_built_in_memory_saves_in_upstream_format(tokenizer_dir, tmp_path):
    tok = FishTokenizer.from_dir(tokenizer_dir)
    fresh = FishTokenizer(tok.ranks, list(tok.special_tokens), name="x")
    fresh.save_pretrained(tmp_path / "out")
    again = FishTokenizer.from_dir(tmp_path / "out")
    assert again.special_tokens == tok.special_tokens and again.ranks == tok.ranks


def test_a_list_of_special_tokens_is_accepted(tokenizer_dir):
    specials = tokenizer_dir / "special_tokens.json"
    specials.write_text(json.dumps(list(json.loads(specials.read_text()))))
    tok = FishTokenizer.from_dir(tokenizer_dir)
    assert tok.token_id("<|begin_of_text|>") == len(tok.ranks)


def test_stated_ids_that_disagree_with_the_order_are_refused(tokenizer_dir):
    specials = tokenizer_dir / "special_tokens.json"
    data = json.loads(specials.read_text())
    data["<|pad|>"] += 1
    specials.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"'<\|pad\|>' is stated as id \d+, but special ids follow"):
        FishTokenizer.from_dir(tokenizer_dir)


def test_missing_files_are_named(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"tokenizer.tiktoken not found.*has \['model.pth'\]"):
        FishTokenizer.from_dir(tmp_path)


def test_bad_rank_line(tokenizer_dir):
    with open(tokenizer_dir / "tokenizer.tiktoken", "a") as f:
        f.write("aGk= notanumber\n")
    with pytest.raises(ValueError, match=r"tokenizer.tiktoken:\d+: expected"):
        FishTokenizer.from_dir(tokenizer_dir)


def test_same_ids_as_upstream(tokenizer_dir, tmp_path):
    from upstream import upstream_fish_speech

    theirs = upstream_fish_speech().tokenizer.FishTokenizer.from_pretrained(str(tokenizer_dir))
    ours = FishTokenizer.from_dir(tokenizer_dir)
    for text in ("hello world, hyvää päivää!", "ሰላም ነው 123", "it's 3.14 — 'quoted'\n  spaces  "):
        assert ours.encode(text) == theirs.encode(text, allowed_special=False)
    assert ours.special_tokens == theirs.all_special_tokens_with_ids
    assert (ours.semantic_ids[0], ours.semantic_ids[-1]) == (theirs.semantic_begin_id, theirs.semantic_end_id)
    theirs.save_pretrained(str(tmp_path / "theirs"))
    ours.save_pretrained(tmp_path / "ours")
    assert FishTokenizer.from_dir(tmp_path / "theirs").special_tokens == ours.special_tokens
