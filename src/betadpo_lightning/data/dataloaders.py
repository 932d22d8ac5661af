"""A training DataLoader that resumes mid-epoch at the exact batch, on one device or many.

Lightning saves the ``state_dict()`` of every training loader that has one and, on resume, calls
``load_state_dict()`` before iterating. The loader counts the batches it has handed out in the current epoch; the
sampler is a :class:`~torch.utils.data.DistributedSampler` (Lightning then keeps it rather than replacing it) whose
order depends only on ``(seed, epoch)``, so a resumed run skips exactly the index batches it already consumed —
without loading or collating them — and then sees the same batches as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = [
    "EvalSampler",
    "MarkPadding",
    "ResumableDataLoader",
    "ResumableSampler",
    "SampleLists",
    "eval_loader",
    "resumable_train_loader",
]


class ResumableSampler(DistributedSampler):
    """Seeded shuffling per ``(seed, epoch)``, this rank's share, and an optional number of leading samples to skip.

    ``len()`` is always the full share of an epoch; ``skip`` only shortens the first iteration after a restore. A
    subclass may yield lists of indices instead (one per batch, for a loader with ``batch_size=None``, such as
    :class:`~betadpo_lightning.data.token_batches.TokenBudgetSampler`); ``skip`` then counts batches.

    Args:
        dataset: the map-style dataset.
        num_replicas: world size.
        rank: this process's global rank.
        shuffle: shuffle with ``seed + epoch``.
        seed: the shuffling seed (identical on every rank).
        drop_last: drop the tail instead of padding it so every rank gets the same number of samples.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.skip = 0

    def __iter__(self) -> Iterator[Any]:
        items = self._epoch_items()
        skip, self.skip = self.skip, 0  # only the first iteration after a restore skips
        return iter(items[skip:])

    def _epoch_items(self) -> list[Any]:
        """Everything this rank yields in the current epoch (subclasses may yield whole batches of indices)."""
        return list(super().__iter__())


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` with ``state_dict``/``load_state_dict`` for exact mid-epoch resumption.

    The state is ``{"epoch": ..., "batches": ...}``: the sampler's epoch and how many batches of it were handed out
    (Lightning does not prefetch from loaders with a length, so that is the number of batches trained on). The
    sampler must be a :class:`ResumableSampler`; batches are formed by ``batch_size``, or, with ``batch_size=None``,
    the sampler yields whole batches of indices (no custom batch sampler: Lightning keeps the loader only when its
    ``sampler`` is a :class:`~torch.utils.data.DistributedSampler`).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int | None = 1,
        sampler: ResumableSampler | None = None,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(sampler, ResumableSampler):
            raise TypeError(f"ResumableDataLoader needs a ResumableSampler, got {type(sampler).__name__}.")
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            drop_last=drop_last,
            **kwargs,
        )
        self._batches = 0
        self._epoch = sampler.epoch

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        assert isinstance(sampler, ResumableSampler)
        if sampler.epoch != self._epoch or sampler.skip == 0:
            self._epoch, self._batches = sampler.epoch, 0
        return self._count(super().__iter__())

    def _count(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The sampler's epoch and the number of batches handed out in it."""
        return {"epoch": self._epoch, "batches": self._batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Arrange for the next iteration to continue the saved epoch after its consumed batches."""
        sampler = self.sampler
        assert isinstance(sampler, ResumableSampler)
        epoch, batches = int(state_dict.get("epoch", 0)), int(state_dict.get("batches", 0))
        # `len(self)` stays the full epoch (Lightning counts the resumed batches itself).
        if batches >= len(self):  # the saved epoch was complete: start the next one from its beginning
            epoch, batches = epoch + 1, 0
        sampler.set_epoch(epoch)
        sampler.skip = batches * (self.batch_size or 1)  # batch_size=None: the sampler yields batches
        self._epoch, self._batches = epoch, batches


def resumable_train_loader(
    dataset: Dataset,
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any],
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> ResumableDataLoader:
    """The shuffled, resumable training loader for this rank (``num_replicas``/``rank`` from the Trainer).

    Args:
        dataset: the map-style training dataset.
        batch_size: pairs per rank and step.
        collate_fn: turns a list of samples into a batch.
        seed: shuffling seed, identical on every rank.
        num_replicas: the world size (``trainer.world_size``).
        rank: this process's rank (``trainer.global_rank``).
        num_workers: loader worker processes.
        pin_memory: pin host memory for faster copies to the GPU.

    Returns:
        A :class:`ResumableDataLoader`.
    """
    sampler = ResumableSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
    return ResumableDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


class EvalSampler(DistributedSampler):
    """This rank's share of an evaluation split in dataset order; the padding that evens out the ranks is marked.

    Like :class:`~torch.utils.data.DistributedSampler` without shuffling, every rank gets ``ceil(n / W)`` samples,
    so that sharded models run the same number of forward passes on every rank; the repeated samples that pad the
    last ones are yielded as ``-1 - index`` and :class:`MarkPadding` serves them flagged, so that metrics and losses
    leave them out and every pair counts exactly once whatever the number of ranks.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)  # type: ignore[arg-type]
        positions = range(self.rank, self.total_size, self.num_replicas)
        return iter(p if p < n else -1 - (p % n) for p in positions)


class MarkPadding(Dataset):
    """A map-style dataset that serves index ``-1 - i`` as sample ``i`` with ``padding=True``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        padding = index < 0
        sample = dict(self.dataset[-1 - index if padding else index])
        sample["padding"] = padding
        return sample


class SampleLists(Dataset):
    """A map-style dataset indexed by lists of indices, for loaders whose sampler yields whole batches.

    Args:
        dataset: the per-sample dataset.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, indices: Sequence[int]) -> list[Any]:  # type: ignore[override]
        return [self.dataset[i] for i in indices]


def eval_loader(
    dataset: Dataset,
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any],
    num_replicas: int = 1,
    rank: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """An evaluation loader in dataset order with flagged padding (see :class:`EvalSampler`)."""
    return DataLoader(
        MarkPadding(dataset),
        batch_size=batch_size,
        sampler=EvalSampler(dataset, num_replicas=num_replicas, rank=rank),
        num_workers=num_workers,
        collate_fn=collate_fn,
        persistent_workers=num_workers > 0,
    )
