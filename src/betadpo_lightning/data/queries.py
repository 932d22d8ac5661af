"""What models, caches and callbacks ask of a preference datamodule, once its pairs are loaded.

:class:`PairDataQueries` is a mixin of :class:`~betadpo_lightning.data.PreferenceDataModule`: the gold reward of
the built-in data, the token-id check against a model's embedding, the identity that keys reference caches, the
collate function, and precomputed per-pair columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from betadpo_lightning.data.splits import SplitSource
from betadpo_lightning.data.synthetic import SyntheticConfig
from betadpo_lightning.data.synthetic.vocab import gold_reward
from betadpo_lightning.data.vocab_check import first_token_at_least, largest_token_id

__all__ = ["PairDataQueries"]

_NOT_SET_UP = "PreferenceDataModule: call prepare_data() and setup() before asking for data loaders"


class PairDataQueries:
    """Questions about the loaded pairs; the class using it sets the attributes below and builds the two helpers."""

    splits: dict[str, datasets.Dataset]
    tokenizer: PreTrainedTokenizerBase | None
    synthetic: SyntheticConfig | None

    def _split_source(self) -> SplitSource:
        raise NotImplementedError

    def _collate(self) -> Callable[[list[Any]], Any]:
        raise NotImplementedError

    @property
    def gold_reward_fn(self) -> Callable[[str], float] | None:
        """The data's known reward of a response text, or ``None`` for data without one.

        The built-in synthetic dataset's :func:`~betadpo_lightning.data.synthetic.gold_reward`; callbacks such as
        :class:`~betadpo_lightning.callbacks.generations.SampleGenerations` score their samples with it.
        """
        return gold_reward if self.synthetic is not None else None

    def token_id_beyond(self, vocab_size: int) -> str | None:
        """The first token id of the data (the padding id included) that ``vocab_size`` embedding rows cannot embed.

        Args:
            vocab_size: the number of rows of a model's input embedding.

        Returns:
            Which id and where (split, row, part), or ``None`` when every id fits.
        """
        pad = self._tokenizer_ready().pad_token_id
        if pad is not None and pad >= vocab_size:
            return f"the padding token id {pad}"
        largest = largest_token_id(self.splits)
        if largest is None or largest < vocab_size:
            return None
        found = first_token_at_least(self.splits, vocab_size)
        return found.describe() if found is not None else f"token id {largest}"

    def cache_identity(self) -> dict[str, object]:
        """What the tokenized pairs depend on, for keys of caches computed from them (after ``setup``).

        Returns:
            ``tokenizer`` (name, size, content hash), ``data`` (source, splits with row counts and fingerprints)
            and ``truncation`` (the limits).
        """
        if self.tokenizer is None or not self.splits:
            raise RuntimeError("PreferenceDataModule: call prepare_data() and setup() first")
        return self._split_source().identity(self.tokenizer, self.splits)

    def collate(self, samples: list[dict]) -> dict[str, Tensor]:
        """Collate samples of :attr:`splits` into a batch (the loaders' collate function)."""
        return self._collate()(samples)

    def attach_columns(self, split: str, columns: dict[str, list[float]]) -> None:
        """Add per-pair columns (e.g. precomputed ``reference_chosen_logps``) to a split; batches then carry them.

        Raises:
            ValueError: naming the column whose length differs from the split's.
        """
        data = self._split(split)
        for name, values in columns.items():
            if len(values) != len(data):
                raise ValueError(f"column {name!r} has {len(values)} values for the {len(data)} pairs of '{split}'")
            if name in data.column_names:
                data = data.remove_columns(name)
            data = data.add_column(name, values)
        self.splits[split] = data

    def _tokenizer_ready(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            raise RuntimeError(_NOT_SET_UP)
        return self.tokenizer

    def _split(self, name: str) -> datasets.Dataset:
        if not self.splits:
            raise RuntimeError(_NOT_SET_UP)
        return self.splits[name]
