"""build_loader: dict collation, rank-disjoint sharding, seeded per-epoch shuffling."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from stellar.data.loader import ResumableSampler, build_loader, collate_dict


class _Dicts(Dataset):
    """Items shaped like ImageFolder's, plus an extra label tensor (like the scenes dataset)."""

    def __init__(self, n: int, side: int = 8) -> None:
        self.n, self.side = n, side

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "canvas": torch.full((3, self.side, self.side), i % 256, dtype=torch.uint8),
            "size": torch.tensor([self.side, self.side - i % 3]),
            "label": torch.tensor(i % 5),
            "index": torch.tensor(i),
            "counts": torch.arange(4) * i,
        }


def _indices(loader) -> list[int]:
    return torch.cat([b["index"] for b in loader]).tolist()


def test_collate_stacks_every_key() -> None:
    ds = _Dicts(10)
    batch = collate_dict([ds[i] for i in (3, 1, 4)])
    assert batch["canvas"].shape == (3, 3, 8, 8) and batch["canvas"].dtype == torch.uint8
    assert batch["size"].shape == (3, 2) and batch["label"].tolist() == [3, 1, 4]
    assert batch["counts"].shape == (3, 4) and batch["counts"][2].tolist() == [0, 4, 8, 12]
    # unreadable files (None items) are left out; a batch of nothing but them is empty
    assert collate_dict([None, ds[2], None])["index"].tolist() == [2]
    assert collate_dict([None, None]) == {}


class _SomeUnreadable(_Dicts):
    def __getitem__(self, i: int):
        return None if i < 6 else super().__getitem__(i)


def test_loader_skips_batches_of_unreadable_files_only() -> None:
    loader = build_loader(_SomeUnreadable(12), 4, shuffle=False)
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[6, 7], [8, 9, 10, 11]]


def test_resumable_sampler_is_the_loader_sampler_and_resumes_mid_epoch() -> None:
    ds = _Dicts(20)
    loader = build_loader(ds, 2, shuffle=True, seed=4, drop_last=False)
    loader.sampler.set_epoch(2)
    whole = _indices(loader)
    loader.sampler.set_position(2, 6)
    assert _indices(loader) == whole[6:]
    single = ResumableSampler(20, seed=4)
    single.set_position(2, 0)
    assert list(single) == whole


def test_two_ranks_are_disjoint() -> None:
    ds = _Dicts(24)
    seen = []
    for rank in range(2):
        loader = build_loader(ds, 4, shuffle=True, seed=3, num_replicas=2, rank=rank)
        assert isinstance(loader.sampler, ResumableSampler) and loader.sampler.num_replicas == 2
        loader.sampler.set_epoch(1)
        seen.append(_indices(loader))
    assert len(seen[0]) == len(seen[1]) == 12
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(24))


def test_seeded_epoch_shuffling() -> None:
    ds = _Dicts(32)
    a = build_loader(ds, 8, shuffle=True, seed=7)
    b = build_loader(ds, 8, shuffle=True, seed=7)
    assert isinstance(a.sampler, ResumableSampler) and not a.pin_memory  # pinned only if asked
    assert _indices(a) == _indices(b)
    first = _indices(a)
    assert sorted(first) == list(range(32)) and first != list(range(32))
    a.sampler.set_epoch(1)
    assert _indices(a) != first and sorted(_indices(a)) == list(range(32))
    a.sampler.set_epoch(0)
    assert _indices(a) == first
    assert _indices(build_loader(ds, 8, shuffle=True, seed=8)) != first
    assert _indices(build_loader(ds, 8, shuffle=False)) == list(range(32))


def test_drop_last_and_errors() -> None:
    ds = _Dicts(10)
    loader = build_loader(ds, 4, shuffle=False)
    assert len(loader) == 2 and _indices(loader) == list(range(8))
    assert len(build_loader(ds, 4, shuffle=False, drop_last=False)) == 3
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(ds, 0)


def test_workers_are_persistent_and_deterministic() -> None:
    ds = _Dicts(12)
    loader = build_loader(ds, 3, num_workers=2, shuffle=True, seed=1)
    assert loader.persistent_workers
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        assert all(b["canvas"].shape == (3, 3, 8, 8) for b in batches)
        epochs.append(torch.cat([b["index"] for b in batches]).tolist())
    assert epochs[0] != epochs[1]
    serial = build_loader(ds, 3, num_workers=0, shuffle=True, seed=1)
    assert _indices(serial) == epochs[0]
