"""The resumable training loader: sharding, seeded order per epoch, exact mid-epoch continuation."""

from __future__ import annotations

import pytest

from betadpo_lightning.data.dataloaders import ResumableDataLoader, ResumableSampler, resumable_train_loader
from helpers.tiny import RandomPairs, collate_pairs


def _indices(loader) -> list[list[int]]:
    return [batch["pair_index"].tolist() for batch in loader]


def test_ranks_get_disjoint_shares_of_the_same_permutation():
    dataset = RandomPairs(10)
    shares = [list(ResumableSampler(dataset, num_replicas=2, rank=r, seed=5)) for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(10))
    single = list(ResumableSampler(dataset, seed=5))
    assert shares[0] == single[0::2]
    assert shares[1] == single[1::2]


def test_order_depends_only_on_seed_and_epoch():
    dataset = RandomPairs(12)
    a, b = ResumableSampler(dataset, seed=1), ResumableSampler(dataset, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    assert list(a) != list(ResumableSampler(dataset, seed=2))


@pytest.mark.parametrize("consumed", [0, 1, 2])
def test_resume_mid_epoch_continues_with_the_next_batch(consumed):
    dataset = RandomPairs(10)
    full = resumable_train_loader(dataset, 4, collate_pairs, seed=7)
    full.sampler.set_epoch(2)
    expected = _indices(full)  # 3 batches: 4 + 4 + 2

    first = resumable_train_loader(dataset, 4, collate_pairs, seed=7)
    first.sampler.set_epoch(2)
    iterator = iter(first)
    head = [next(iterator)["pair_index"].tolist() for _ in range(consumed)]
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": consumed}

    resumed = resumable_train_loader(dataset, 4, collate_pairs, seed=7)
    resumed.load_state_dict(state)
    assert len(resumed) == 3  # Lightning counts the consumed batches itself: the length stays the full epoch
    assert head + _indices(resumed) == expected
    assert resumed.state_dict() == {"epoch": 2, "batches": 3}
    resumed.sampler.set_epoch(3)
    assert sorted(i for batch in _indices(resumed) for i in batch) == list(range(10))  # next epoch: everything


def test_a_finished_epoch_resumes_at_the_next_one():
    dataset = RandomPairs(8)
    loader = resumable_train_loader(dataset, 4, collate_pairs, seed=0)
    loader.load_state_dict({"epoch": 0, "batches": 2})
    assert loader.sampler.epoch == 1
    assert sorted(i for batch in _indices(loader) for i in batch) == list(range(8))


def test_needs_a_resumable_sampler():
    with pytest.raises(TypeError, match="ResumableSampler"):
        ResumableDataLoader(RandomPairs(4), batch_size=2)


def test_the_datamodule_serves_this_ranks_resumable_share(tmp_path):
    from betadpo_lightning.data import PreferenceDataModule, SyntheticConfig

    data = PreferenceDataModule(
        dataset="synthetic",
        synthetic=SyntheticConfig(train_size=24, validation_size=4),
        batch_size=4,
        cache_dir=str(tmp_path),
        seed=3,
    )
    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    first = _indices(loader)
    assert sorted(i for batch in first for i in batch) == list(range(24))
    resumed = data.train_dataloader()
    resumed.load_state_dict({"epoch": 0, "batches": 2})
    assert _indices(resumed) == first[2:]
