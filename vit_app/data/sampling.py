"""Reproducible, resumable sampling: every epoch's order and every image's augmentation depend only on
(seed, epoch, index), never on a global RNG, so a run resumed mid-epoch sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vit_app.data.folder import BadImage


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (tuple hashing of ints is the same in every process and run)."""
    return hash(tuple(int(p) for p in parts)) & 0x7FFFFFFFFFFFFFFF


class EpochSampler(DistributedSampler):
    """DistributedSampler (so Lightning keeps it under DDP) that yields (index, epoch) and can resume mid-epoch.

    The order is DistributedSampler's: a permutation seeded by seed + epoch, sharded by rank. `skip_next(n)` makes
    the next pass start after its first n indices (the ones a resumed run has already trained on).
    """

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=shuffle)
        self._skip = 0

    def skip_next(self, n: int) -> None:
        self._skip = max(0, int(n))

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        start, self._skip = self._skip, 0
        return iter([(i, self.epoch) for i in indices[start:]])


class SeededTransform(Dataset):
    """Apply `transform` to base[i] under an RNG seeded from (seed, epoch, i): the same image gets the same
    augmentation in the same epoch, whichever worker or process draws it, and the caller's RNG is untouched."""

    def __init__(self, base: Dataset, transform: Any, seed: int) -> None:
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        img, label = self.base[index]
        if isinstance(img, BadImage):  # an unreadable file: nothing to transform, the batch drops it
            return img, label
        s = mix_seed(self.seed, epoch, index)
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            try:
                x = self.transform(img)
            finally:
                random.setstate(state)
        return x, label


class ResumableDataLoader(DataLoader):
    """A DataLoader over an EpochSampler that Lightning can checkpoint mid-epoch (`state_dict` / `load_state_dict`):
    the state is (epoch, batches handed out), and a restored loader skips exactly those batches of that epoch."""

    def __init__(self, dataset: Dataset, sampler: EpochSampler, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._taken = 0  # batches handed out in the current pass, the skipped ones included
        self._resume: tuple[int, int] | None = None  # (epoch, batches) to skip when that epoch starts

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler: EpochSampler = self.sampler  # type: ignore[assignment]
        self._taken = 0
        if self._resume is not None and self._resume[0] == sampler.epoch:
            self._taken = self._resume[1]
            sampler.skip_next(self._taken * int(self.batch_size or 1))
        self._resume = None
        for batch in super().__iter__():
            self._taken += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": self._taken}  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))
