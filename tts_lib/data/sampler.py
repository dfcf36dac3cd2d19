"""Length-bucketed batches under a padded-token budget, deterministic, shardable and resumable.

Padding is wasted GPU work: a batch costs `len(batch) * longest item` tokens whatever the other
items hold, so batches should contain items of similar length. Items are grouped into geometric
length buckets (each bucket's longest item is at most `bucket_ratio` times its shortest), so a batch
drawn from one bucket wastes at most about `1 - 1 / bucket_ratio` of its tokens.

How an epoch's batches are made (all randomness from `seed` and the epoch number):
  1. items are shuffled inside each bucket;
  2. buckets are visited shortest first; each bucket is cut into batches of
     `min(max_items, max_tokens // longest item in the bucket)` items; the few items left over
     join the next bucket (they are shorter than anything there, so the budget still holds);
     whatever is left after the last bucket makes one final, smaller batch;
  3. the batch order is shuffled.
With `shuffle=False` nothing is shuffled: items are sorted by length (ties by index) and batches
come shortest first, the same every epoch.
Batch sizes depend only on the multiset of lengths, so every epoch has the same number of batches
and `len(sampler)` is stable; only which items share a batch, and the order, change per epoch.

Distributed training: the epoch's batch list is the same on every rank. It is padded to a multiple
of `world_size` by repeating batches from its start (the only case where an item is seen twice in
an epoch) and rank r takes `batches[r::world_size]`, so global step k under N ranks consumes the
same batches as micro-batches k*N .. k*N+N-1 of a one-process run.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

DEFAULT_BUCKET_RATIO = 1.05  # 1.1 lands right at ~0.95 efficiency; 1.05 leaves margin
STATE_KEYS = ("seed", "num_items", "lengths_sha1", "max_tokens", "max_items", "world_size")  # must match to resume


def frames_for_duration(seconds: float, frame_rate: float) -> int:
    """Codec frames (audio tokens) for a clip of `seconds` at the family's `frame_rate`: rounded up, at least 1."""
    return max(1, math.ceil(seconds * frame_rate))


def _describe(indices: list[int], lengths: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(f"index {i} ({lengths[i]} tokens)" for i in indices[:limit])
    return shown + (", ..." if len(indices) > limit else "")


class LengthBucketedBatchSampler:
    """Yields lists of item indices; pass it to a DataLoader as `batch_sampler=`.

    `lengths[i]` is item i's length in tokens (its audio token count). A batch's cost is
    `len(batch) * max length in batch` and never exceeds `max_tokens`; a batch never has more than
    `max_items` items. No item is skipped: an item longer than `max_tokens` is an error.

    Epochs and resuming: call `set_epoch(e)` before each epoch. `__iter__` yields the current
    epoch's batches from `position` on, counting each batch as it is handed out; once the epoch is
    exhausted, iterating again yields nothing until `set_epoch` moves to another epoch. Calling
    `set_epoch` with the current epoch keeps the position, so the usual loop
    `for e in range(start, E): sampler.set_epoch(e)` continues a restored epoch where it stopped.

    `position` counts batches handed out, not batches trained on: a DataLoader with workers
    prefetches ahead. A training loop should save its own count of consumed batches, e.g.
    `sampler.state_dict(position=consumed)`, and restore it with `load_state_dict`. `len()` is
    always the whole epoch's batch count, also after a mid-epoch restore.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        max_items: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        bucket_ratio: float = DEFAULT_BUCKET_RATIO,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be at least 1 or None, got {max_items}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if bucket_ratio <= 1.0:
            raise ValueError(f"bucket_ratio must be greater than 1, got {bucket_ratio}")
        self.lengths = [int(n) for n in lengths]
        if not self.lengths:
            raise ValueError("no items: lengths is empty")
        too_short = [i for i, n in enumerate(self.lengths) if n < 1]
        if too_short:
            raise ValueError(
                f"{len(too_short)} items have a length below 1 token: {_describe(too_short, self.lengths)}"
            )
        too_long = [i for i, n in enumerate(self.lengths) if n > max_tokens]
        if too_long:
            raise ValueError(
                f"{len(too_long)} items are longer than max_tokens={max_tokens} and would fit in no batch: "
                f"{_describe(too_long, self.lengths)}; exclude them (validation reports over-long items "
                "as too_long) or raise max_tokens"
            )
        self.max_tokens = max_tokens
        self.max_items = max_items
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.bucket_ratio = bucket_ratio
        self.epoch = 0
        self.position = 0
        self._buckets = self._make_buckets()
        self._cache: tuple[int, list[list[int]]] | None = None  # (epoch, this rank's batches)

    def _make_buckets(self) -> list[list[int]]:
        """Item indices per non-empty bucket, shortest bucket first, indices ascending."""
        step = math.log(self.bucket_ratio)
        by_key: dict[int, list[int]] = {}
        for i, n in enumerate(self.lengths):
            by_key.setdefault(math.floor(math.log(n) / step), []).append(i)
        return [by_key[k] for k in sorted(by_key)]

    def global_batches(self, epoch: int) -> list[list[int]]:
        """Every batch of `epoch` in one-process order, before padding and sharding."""
        # A string seed is hashed with SHA-512: the same on every rank, run and Python version.
        rng = random.Random(f"length-buckets:{self.seed}:{epoch}")
        batches: list[list[int]] = []
        carry: list[int] = []
        for bucket in self._buckets:
            if self.shuffle:
                pool = carry + bucket
                rng.shuffle(pool)
            else:
                pool = carry + sorted(bucket, key=lambda i: self.lengths[i])
            # Carried items are shorter than this bucket's items, so its longest item sets the size.
            size = self.max_tokens // max(self.lengths[i] for i in bucket)
            if self.max_items is not None:
                size = min(size, self.max_items)
            full = len(pool) // size * size
            batches.extend(pool[k : k + size] for k in range(0, full, size))
            carry = pool[full:]
        if carry:
            batches.append(carry)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for `epoch`: the padded global list, dealt out round-robin."""
        if self._cache is None or self._cache[0] != epoch:
            batches = self.global_batches(epoch)
            short = -len(batches) % self.world_size
            # Cycle in case there are fewer batches than ranks.
            padded = batches + [batches[k % len(batches)] for k in range(short)]
            self._cache = (epoch, padded[self.rank :: self.world_size])
        return self._cache[1]

    def set_epoch(self, epoch: int) -> None:
        """Move to `epoch`, starting at its first batch; the current epoch keeps its position."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def __len__(self) -> int:
        return len(self.rank_batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches(self.epoch)
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield list(batch)

    def next_batch(self) -> list[int]:
        """This rank's next batch, going on to the next epoch when the current one is used up: for a loop that
        takes batches one at a time (no DataLoader prefetching), so `state_dict()` holds exactly what it consumed."""
        if self.position >= len(self.rank_batches(self.epoch)):
            self.set_epoch(self.epoch + 1)
        batch = self.rank_batches(self.epoch)[self.position]
        self.position += 1
        return list(batch)

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """Where this rank is; `position` overrides the batches-handed-out count (see class doc)."""
        return {
            "epoch": self.epoch,
            "position": self.position if position is None else position,
            "seed": self.seed,
            "num_items": len(self.lengths),
            # Same count, other lengths: other batches. Cheap to check, so check it.
            "lengths_sha1": hashlib.sha1(",".join(map(str, self.lengths)).encode()).hexdigest(),
            "max_tokens": self.max_tokens,
            "max_items": self.max_items,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at `state`'s epoch and position; refuse a state saved with other settings."""
        mine = self.state_dict()
        different = [k for k in STATE_KEYS if state.get(k) != mine[k]]
        if different:
            detail = ", ".join(f"{k}: saved {state.get(k)!r}, now {mine[k]!r}" for k in different)
            raise ValueError(
                f"cannot resume the batch sampler: {detail}; the saved position refers to other batches "
                "(same data, budget, seed and number of processes are needed to resume mid-epoch)"
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        total = len(self.rank_batches(epoch))
        if not 0 <= position <= total:
            raise ValueError(f"cannot resume the batch sampler: position {position} is outside 0..{total}")
        self.epoch = epoch
        self.position = position
