"""Resumable distributed sampler: DistributedSampler's order, exact mid-epoch resume, drop_last semantics."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from gigatok.data.sampler import ResumableDistributedSampler

DATA = list(range(103))  # not a multiple of any tested world size


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("shuffle, drop_last", [(True, True), (True, False), (False, True), (False, False)])
def test_same_order_as_distributed_sampler(world, shuffle, drop_last):
    for rank in range(world):
        ours = ResumableDistributedSampler(DATA, world, rank, shuffle=shuffle, seed=7, drop_last=drop_last)
        ref = DistributedSampler(DATA, world, rank, shuffle=shuffle, seed=7, drop_last=drop_last)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == list(ref) and len(ours) == len(ref)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_epoch_union_is_permutation(world):
    per_rank = [list(ResumableDistributedSampler(DATA, world, r, seed=1, drop_last=True)) for r in range(world)]
    union = [i for indices in per_rank for i in indices]
    assert len(union) == len(set(union)) == (len(DATA) // world) * world  # disjoint, tail dropped
    assert set(union) <= set(DATA)
    padded = [i for r in range(world) for i in ResumableDistributedSampler(DATA, world, r, drop_last=False)]
    assert set(padded) == set(DATA)  # without drop_last every sample is seen (the tail padded by repeats)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("consumed_batches", [0, 1, 5])
def test_resume_mid_epoch_yields_exactly_the_rest(world, consumed_batches):
    batch = 4
    for rank in range(world):
        sampler = ResumableDistributedSampler(DATA, world, rank, seed=3)
        sampler.set_epoch(2)
        full = list(sampler)
        it = iter(sampler)
        for _ in range(consumed_batches):
            taken = [next(it) for _ in range(batch)]
            sampler.advance(len(taken))
        state = sampler.state_dict()
        assert state["epoch"] == 2 and state["position"] == consumed_batches * batch

        fresh = ResumableDistributedSampler(DATA, world, rank, seed=3)
        fresh.load_state_dict(state)
        fresh.set_epoch(2)  # the loop's set_epoch for the same epoch keeps the position
        rest = list(fresh)
        assert rest == full[consumed_batches * batch:] and len(fresh) == len(rest)
        fresh.set_epoch(3)  # the next epoch starts from its beginning
        assert len(list(fresh)) == fresh.num_samples


def test_resume_with_dataloader_and_workers_prefetching():
    """The loop, not the iterator, advances the position: prefetching workers do not shift the resume point."""
    sampler = ResumableDistributedSampler(DATA, 1, 0, seed=0)
    full = list(sampler)
    loader = DataLoader(DATA, batch_size=8, sampler=sampler, drop_last=True, num_workers=2, prefetch_factor=4)
    seen = []
    for i, batch in enumerate(loader):
        seen += batch.tolist()
        sampler.advance(len(batch))
        if i == 4:
            break
    fresh = ResumableDistributedSampler(DATA, 1, 0, seed=0)
    fresh.load_state_dict(sampler.state_dict())
    rest = [i for b in DataLoader(DATA, batch_size=8, sampler=fresh, drop_last=True) for i in b.tolist()]
    assert len(seen) == 40 and seen + rest == full[:96]  # 103 // 8 * 8 = 96 in one pass; nothing lost or repeated


def test_finished_epoch_and_changed_settings():
    sampler = ResumableDistributedSampler(DATA, 2, 0, seed=0)
    sampler.advance(sampler.num_samples)
    fresh = ResumableDistributedSampler(DATA, 2, 0, seed=0)
    fresh.load_state_dict(sampler.state_dict())
    assert (fresh.epoch, fresh.position) == (1, 0)  # a finished epoch moves on

    sampler = ResumableDistributedSampler(DATA, 2, 0, seed=0)
    sampler.advance(10)
    other_world = ResumableDistributedSampler(DATA, 3, 0, seed=0)
    other_world.load_state_dict(sampler.state_dict())
    assert (other_world.epoch, other_world.position) == (0, 0)  # order changed: restart the epoch


def test_defaults_without_process_group_and_errors():
    sampler = ResumableDistributedSampler(DATA)
    assert (sampler.rank, sampler.num_replicas) == (0, 1) and sorted(sampler) == DATA
    with pytest.raises(ValueError, match="advance"):
        sampler.advance(len(DATA) + 1)
    with pytest.raises(ValueError, match="rank"):
        ResumableDistributedSampler(DATA, 2, 2)
    with pytest.raises(ValueError, match="world size"):
        ResumableDistributedSampler([0], 2, 0)
    assert isinstance(torch.tensor(list(sampler)), torch.Tensor)
