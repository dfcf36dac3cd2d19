"""LengthBucketedBatchSampler: budget, coverage, determinism, sharding, resume, errors."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tts_lib.data.sampler import LengthBucketedBatchSampler, frames_for_duration


def random_lengths(n: int, seed: int, low: int = 20, high: int = 220) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(n)]


def test_frames_for_duration_rounds_up_and_is_at_least_one():
    s1_mini = 44100 / 2048  # about 21.53 frames a second
    assert frames_for_duration(1.0, s1_mini) == 22  # 21.53... rounds up
    assert frames_for_duration(2048 / 44100, s1_mini) == 1
    assert frames_for_duration(0.0, s1_mini) == 1
    assert frames_for_duration(10.0, frame_rate=50) == 500


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("max_tokens,max_items", [(300, None), (1000, None), (4096, 8), (2000, 1)])
def test_every_batch_respects_the_budget(seed, max_tokens, max_items):
    lengths = random_lengths(500, seed, high=300)
    sampler = LengthBucketedBatchSampler(lengths, max_tokens, max_items, seed=seed)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in sampler:
            assert batch
            assert len(batch) * max(lengths[i] for i in batch) <= max_tokens
            assert max_items is None or len(batch) <= max_items


@pytest.mark.parametrize("seed", [0, 5, 17])
@pytest.mark.parametrize("n", [1, 7, 300, 1001])
def test_every_item_exactly_once_per_epoch(seed, n):
    lengths = random_lengths(n, seed + n, low=1, high=400)
    sampler = LengthBucketedBatchSampler(lengths, 1200, seed=seed)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(n))


def test_shuffle_false_keeps_every_item_and_sorts_batches_by_length():
    lengths = random_lengths(200, 3)
    batches = list(LengthBucketedBatchSampler(lengths, 1000, shuffle=False))
    assert sorted(i for b in batches for i in b) == list(range(200))
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest == sorted(longest)


def test_same_seed_and_epoch_give_the_same_batches_and_epochs_differ():
    lengths = random_lengths(400, 9)
    a = LengthBucketedBatchSampler(lengths, 1500, seed=11)
    b = LengthBucketedBatchSampler(list(lengths), 1500, seed=11)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    assert a.global_batches(0) != a.global_batches(1)
    other_seed = LengthBucketedBatchSampler(lengths, 1500, seed=12)
    assert other_seed.global_batches(4) != a.global_batches(4)


def rank_correlation(xs: list[float]) -> float:
    """Spearman's rho between position and value (no ties expected to matter at this size)."""
    order = sorted(range(len(xs)), key=xs.__getitem__)
    ranks = [0] * len(xs)
    for r, i in enumerate(order):
        ranks[i] = r
    n = len(xs)
    return 1 - 6 * sum((r - i) ** 2 for i, r in enumerate(ranks)) / (n * (n * n - 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_order_is_shuffled_so_lengths_do_not_drift_through_the_epoch(seed):
    # Buckets are cut shortest first; without the final shuffle an epoch would run all short batches, then all
    # long ones: the learning rate schedule would meet lengths in order and memory would peak only at the end.
    lengths = random_lengths(2000, seed, low=20, high=400)
    for epoch in range(2):
        batches = LengthBucketedBatchSampler(lengths, 2000, seed=seed).global_batches(epoch)
        longest = [max(lengths[i] for i in b) for b in batches]
        assert len(batches) > 100 and abs(rank_correlation(longest)) < 0.3
    ordered = LengthBucketedBatchSampler(lengths, 2000, shuffle=False).global_batches(0)
    assert rank_correlation([max(lengths[i] for i in b) for b in ordered]) > 0.9  # what the shuffle removes


def test_batch_count_is_the_same_every_epoch():
    sampler = LengthBucketedBatchSampler(random_lengths(700, 4), 2000)
    counts = {len(sampler.global_batches(e)) for e in range(6)}
    assert len(counts) == 1


def padded_fraction(batches, lengths):
    real = sum(lengths[i] for b in batches for i in b)
    return real / sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_batches_group_similar_lengths_nearly_as_well_as_sorting():
    lengths = random_lengths(3000, 8, low=20, high=400)
    shuffled = LengthBucketedBatchSampler(lengths, 4000).global_batches(0)
    ordered = LengthBucketedBatchSampler(lengths, 4000, shuffle=False).global_batches(0)
    rng = random.Random(0)
    scattered = [rng.sample(range(len(lengths)), len(b)) for b in shuffled]  # same sizes, random items
    assert padded_fraction(shuffled, lengths) >= padded_fraction(ordered, lengths) - 0.03
    assert padded_fraction(shuffled, lengths) > padded_fraction(scattered, lengths) + 0.2


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_equal_shards_that_match_a_one_process_run(world_size):
    lengths = random_lengths(523, world_size)
    # The first budget whose batch count needs padding: the interesting case.
    max_tokens = next(t for t in range(900, 1000) if len(LengthBucketedBatchSampler(lengths, t)) % world_size)
    one = LengthBucketedBatchSampler(lengths, max_tokens, seed=3)
    one.set_epoch(2)
    single = list(one)
    short = -len(single) % world_size
    ranks = []
    for rank in range(world_size):
        s = LengthBucketedBatchSampler(lengths, max_tokens, seed=3, rank=rank, world_size=world_size)
        s.set_epoch(2)
        ranks.append(list(s))
        assert len(ranks[-1]) == len(s)
    assert len({len(r) for r in ranks}) == 1
    # Global step k takes micro-batches k*N .. k*N+N-1 of the one-process order, then padding repeats
    # batches from its start.
    interleaved = [ranks[r][k] for k in range(len(ranks[0])) for r in range(world_size)]
    assert interleaved == single + single[:short]
    seen = Counter(i for b in interleaved[: len(single)] for i in b)
    assert sorted(seen) == list(range(len(lengths)))
    assert set(seen.values()) == {1}


def test_more_ranks_than_batches_still_gives_every_rank_a_batch():
    lengths = [10, 10, 10]
    shards = [list(LengthBucketedBatchSampler(lengths, 100, rank=r, world_size=4)) for r in range(4)]
    assert all(len(s) == 1 for s in shards)
    assert all(s == shards[0] for s in shards)


@pytest.mark.parametrize("world_size,rank", [(1, 0), (3, 1)])
@pytest.mark.parametrize("k", [0, 1, 13])
def test_resume_mid_epoch_yields_exactly_the_rest(world_size, rank, k):
    lengths = random_lengths(900, 21)
    settings = dict(max_tokens=1500, max_items=16, seed=7, rank=rank, world_size=world_size)
    full = LengthBucketedBatchSampler(lengths, **settings)
    full.set_epoch(5)
    uninterrupted = list(full)
    assert len(uninterrupted) > k + 5

    first = LengthBucketedBatchSampler(lengths, **settings)
    first.set_epoch(5)
    it = iter(first)
    head = [next(it) for _ in range(k)]
    state = first.state_dict()
    assert state["epoch"] == 5 and state["position"] == k

    resumed = LengthBucketedBatchSampler(lengths, **settings)
    resumed.load_state_dict(state)
    resumed.set_epoch(5)  # the usual loop calls this again; it must not restart the epoch
    assert head + list(resumed) == uninterrupted
    assert list(resumed) == []  # exhausted until the next epoch
    resumed.set_epoch(6)
    full.set_epoch(6)
    assert list(resumed) == list(full)


def test_state_dict_position_override_for_prefetching_loops():
    lengths = random_lengths(300, 2)
    s = LengthBucketedBatchSampler(lengths, 1000)
    batches = list(s)  # a prefetching loader has handed out everything ...
    state = s.state_dict(position=4)  # ... but only 4 batches were trained on
    assert state["position"] == 4
    fresh = LengthBucketedBatchSampler(lengths, 1000)
    fresh.load_state_dict(state)
    assert list(fresh) == batches[4:]


@pytest.mark.parametrize(
    "key,value",
    [
        ("num_items", 299),
        ("lengths_sha1", "0" * 40),
        ("max_tokens", 999),
        ("max_items", 4),
        ("world_size", 2),
        ("seed", 1),
    ],
)
def test_refuses_a_state_saved_with_other_settings(key, value):
    s = LengthBucketedBatchSampler(random_lengths(300, 2), 1000)
    state = s.state_dict() | {key: value}
    with pytest.raises(ValueError, match=key):
        s.load_state_dict(state)


def test_refuses_a_position_past_the_end():
    s = LengthBucketedBatchSampler(random_lengths(300, 2), 1000)
    with pytest.raises(ValueError, match="position"):
        s.load_state_dict(s.state_dict(position=len(s) + 1))


def test_over_long_items_are_an_error_naming_them():
    lengths = [100] * 10 + [5000, 100, 4097, 6000]
    with pytest.raises(ValueError) as e:
        LengthBucketedBatchSampler(lengths, 4096)
    message = str(e.value)
    assert "3 items" in message
    assert "index 10 (5000 tokens)" in message and "index 12 (4097 tokens)" in message
    assert "index 13 (6000 tokens)" in message
    assert "max_tokens" in message and "exclude" in message


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lengths=[], max_tokens=100), "empty"),
        (dict(lengths=[3, 0], max_tokens=100), "below 1"),
        (dict(lengths=[3], max_tokens=0), "max_tokens"),
        (dict(lengths=[3], max_tokens=10, max_items=0), "max_items"),
        (dict(lengths=[3], max_tokens=10, rank=2, world_size=2), "rank"),
        (dict(lengths=[3], max_tokens=10, bucket_ratio=1.0), "bucket_ratio"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LengthBucketedBatchSampler(**kwargs)


def test_works_as_a_dataloader_batch_sampler():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    lengths = random_lengths(120, 6)
    sampler = LengthBucketedBatchSampler(lengths, 800, seed=4)
    sampler.set_epoch(1)
    expected = sampler.global_batches(1)
    loader = DataLoader(list(range(len(lengths))), batch_sampler=sampler)
    assert len(loader) == len(expected)
    got = [batch.tolist() for batch in loader]
    assert got == expected
    assert isinstance(next(iter(DataLoader(lengths, batch_size=2))), torch.Tensor)
    assert list(loader) == []  # exhausted: no batches ...
    sampler.set_epoch(2)  # ... until the next epoch
    assert [batch.tolist() for batch in loader] == sampler.global_batches(2)


def test_next_batch_runs_through_epochs_and_resumes_from_its_own_state():
    lengths = [random.Random(3).randint(5, 60) for _ in range(40)]
    sampler = LengthBucketedBatchSampler(lengths, max_tokens=120, seed=7)
    per_epoch = len(sampler.rank_batches(0))
    taken = [sampler.next_batch() for _ in range(per_epoch + 3)]
    assert taken[:per_epoch] == sampler.rank_batches(0) and taken[per_epoch:] == sampler.rank_batches(1)[:3]
    assert (sampler.epoch, sampler.position) == (1, 3)
    again = LengthBucketedBatchSampler(lengths, max_tokens=120, seed=7)
    again.load_state_dict(sampler.state_dict())
    assert [again.next_batch() for _ in range(per_epoch)] == [sampler.next_batch() for _ in range(per_epoch)]
