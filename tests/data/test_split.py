import random
from collections import Counter

from tts_lib.data.manifest import Item
from tts_lib.data.split import SplitConfig, assign_splits, split_score


def make_items(speakers: dict[str, int], prefix: str = "") -> list[Item]:
    return [
        Item(id=f"{s}/{prefix}{k:05d}", audio=f"{s}/{k}.wav", text="t", speaker=s)
        for s, n in speakers.items()
        for k in range(n)
    ]


def splits(items):
    return {i.id: i.split for i in items}


def test_score_is_uniform_and_depends_only_on_id():
    scores = [split_score(f"x/{k}") for k in range(20000)]
    assert split_score("x/1") == split_score("x/1")
    assert all(0 <= s < 1 for s in scores)
    assert abs(sum(s < 0.05 for s in scores) / len(scores) - 0.05) < 0.01


def test_fraction_stratified_by_speaker():
    items = make_items({"big": 2000, "mid": 400, "tiny": 3})
    summary = assign_splits(items, SplitConfig(val_fraction=0.05, max_val_items=1000))
    val = Counter(i.speaker for i in items if i.split == "val")
    assert 70 < val["big"] < 130 and 8 < val["mid"] < 35
    assert val["tiny"] >= 1  # every speaker with 2+ items shows up in validation
    assert summary.new_val == sum(val.values()) and summary.new_train == len(items) - summary.new_val


def test_deterministic_regardless_of_order():
    a = make_items({"a": 300, "b": 50})
    b = [Item(**vars(i)) for i in a]
    random.Random(1).shuffle(b)
    assign_splits(a)
    assign_splits(b)
    assert splits(a) == splits(b)


def test_cap_on_validation_items():
    items = make_items({"a": 5000, "b": 5000})
    assign_splits(items, SplitConfig(max_val_items=200))
    val = [i for i in items if i.split == "val"]
    assert len(val) == 200 and {i.speaker for i in val} == {"a", "b"}


def test_single_item_speaker_stays_in_training():
    items = make_items({"a": 20, "solo": 1})
    summary = assign_splits(items)
    assert [i.split for i in items if i.speaker == "solo"] == ["train"]
    assert any("solo" in n for n in summary.notes)


def test_appending_never_moves_an_existing_item():
    old = make_items({"a": 40, "b": 7, "c": 2})
    assign_splits(old, SplitConfig(max_val_items=10))
    before = splits(old)
    # The next version: more data for every speaker and a new speaker, ingested afresh.
    grown = make_items({"a": 40, "b": 7, "c": 2}) + make_items({"a": 500, "b": 300, "c": 100, "d": 50}, "new")
    summary = assign_splits(grown, SplitConfig(max_val_items=10), previous=before)
    after = splits(grown)
    assert all(after[k] == v for k, v in before.items())
    assert summary.kept == len(old)
    assert Counter(i.speaker for i in grown if i.split == "val")["d"] >= 1


def test_items_that_carry_a_split_keep_it():
    items = make_items({"a": 100})
    for i in items:
        i.split = "train"
    items[0].split = "val"
    summary = assign_splits(items)
    assert summary.kept == 100 and summary.new_val == 0
    assert [i.id for i in items if i.split == "val"] == [items[0].id]
