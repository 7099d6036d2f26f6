"""A `DistributedSampler` that resumes mid-epoch.

Index order is exactly `torch.utils.data.DistributedSampler`'s (shuffle: `randperm(len(dataset))` from a
generator seeded with `seed + epoch`; `drop_last` truncates to a multiple of the world size, otherwise the
permutation is padded by wrapping around; rank r takes positions r, r + num_replicas, r + 2 * num_replicas, ...),
so a run resumed from an official checkpoint at an epoch boundary sees the official order. On top of that the
sampler keeps a `position`: how many of this rank's indices of the current epoch the training loop has consumed. A
resumed sampler yields only the remaining ones, so the resumed run neither repeats nor skips samples (the official
LlamaGen loop restarts the whole epoch, and `train_c2i.py` even iterates the un-resumed loader).

The position is advanced by the training loop, not by `__iter__`: a DataLoader pulls indices from the sampler
ahead of time (`num_workers * prefetch_factor` batches), so counting yielded indices would overshoot. Usage:

    sampler = ResumableDistributedSampler(dataset, shuffle=True, seed=global_seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=micro_batch_size, sampler=sampler, drop_last=True, ...)
    if resuming: sampler.load_state_dict(ckpt["data_state"])
    for epoch in range(sampler.epoch, epochs):
        sampler.set_epoch(epoch)          # same epoch as the loaded state: keeps the position
        for batch in loader:
            ... train step ...
            sampler.advance(len(batch))   # samples this rank has consumed
            ... save_training_checkpoint(..., data_state=sampler.state_dict())
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import torch
from torch.utils.data import Sampler

from gigatok.infra.dist import get_rank, get_world_size

logger = logging.getLogger(__name__)


class ResumableDistributedSampler(Sampler[int]):
    """Shard a map-style dataset over ranks, shuffled per epoch, with a resumable mid-epoch position.

    Args:
        dataset: anything with `len()`.
        num_replicas: the world size; default the process group's (1 without one).
        rank: this rank; default the process group's (0 without one).
        shuffle: permute each epoch with `seed + epoch` (official: True, seed = global_seed).
        seed: the shuffle seed, identical on every rank.
        drop_last: drop the tail that does not split evenly over ranks (official: True); otherwise pad by
            repeating the first indices.

    Attributes:
        epoch: current epoch (set by `set_epoch` or `load_state_dict`).
        position: indices of this epoch consumed on this rank (advanced by `advance`).
        num_samples: indices per rank per epoch.
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = True) -> None:
        super().__init__()
        self.num_replicas = get_world_size() if num_replicas is None else num_replicas
        self.rank = get_rank() if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside [0, {self.num_replicas})")
        self.dataset_len = len(dataset)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        if drop_last:
            self.num_samples = self.dataset_len // self.num_replicas
        else:
            self.num_samples = math.ceil(self.dataset_len / self.num_replicas)
        if self.num_samples == 0:
            raise ValueError(f"dataset of {self.dataset_len} samples is smaller than the world size "
                             f"{self.num_replicas}: every rank would get nothing")
        self.total_size = self.num_samples * self.num_replicas
        self.epoch = 0
        self.position = 0

    def _epoch_indices(self) -> list[int]:
        """This rank's full index list for `self.epoch` (DistributedSampler's exact order)."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.dataset_len, generator=generator).tolist()
        else:
            indices = list(range(self.dataset_len))
        if self.drop_last:
            indices = indices[:self.total_size]
        else:
            padding = self.total_size - len(indices)
            indices += (indices * math.ceil(padding / len(indices)))[:padding]
        return indices[self.rank:self.total_size:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        """The indices of the current epoch from `position` on (the whole epoch when position is 0)."""
        return iter(self._epoch_indices()[self.position:])

    def __len__(self) -> int:
        """Number of indices the next `__iter__` yields."""
        return self.num_samples - self.position

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate; a different epoch restarts at position 0, the same one keeps it."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def advance(self, num_samples: int) -> None:
        """Record that the training loop consumed `num_samples` more indices of this epoch on this rank."""
        if num_samples < 0 or self.position + num_samples > self.num_samples:
            raise ValueError(f"cannot advance by {num_samples} from position {self.position}: an epoch has "
                             f"{self.num_samples} samples per rank")
        self.position += num_samples

    def state_dict(self) -> dict[str, Any]:
        """{epoch, position} plus the settings that must match on resume (plain ints/bools, checkpoint-safe)."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "num_replicas": self.num_replicas, "dataset_len": self.dataset_len}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved state: same epoch, remaining indices only.

        A finished epoch (position == num_samples) moves on to the next epoch at position 0. A changed dataset
        size, world size, seed or shuffle setting makes the saved position meaningless: the epoch then restarts
        at position 0 (the mid-epoch guarantee cannot hold, so we fall back to the official behaviour).
        """
        self.epoch = int(state["epoch"])
        self.position = int(state.get("position", 0))
        same_order = all(state.get(key, value) == value for key, value in (
            ("seed", self.seed), ("shuffle", self.shuffle), ("drop_last", self.drop_last),
            ("num_replicas", self.num_replicas), ("dataset_len", self.dataset_len)))
        if not same_order:
            logger.warning(
                "sampler state was saved with different settings (%s); restarting epoch %d from its beginning",
                {k: state.get(k) for k in ("seed", "shuffle", "drop_last", "num_replicas", "dataset_len")},
                self.epoch)
            self.position = 0
        elif self.position >= self.num_samples:
            self.epoch, self.position = self.epoch + 1, 0
