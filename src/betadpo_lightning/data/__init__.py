"""Preference data: loading, format handling, exact tokenization, collation and a built-in synthetic dataset.

The names below are imported on first use (PEP 562), so that importing a pure submodule such as
:mod:`betadpo_lightning.data.collate` loads neither Lightning, ``transformers`` nor ``datasets``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from betadpo_lightning.data.collate import collate_preference_pairs
    from betadpo_lightning.data.datamodule import PreferenceDataModule
    from betadpo_lightning.data.errors import PreferenceDataError
    from betadpo_lightning.data.formats import ColumnNames
    from betadpo_lightning.data.stats import SplitStats
    from betadpo_lightning.data.synthetic import SYNTHETIC_VOCAB_SIZE, SyntheticConfig, gold_reward

__all__ = [
    "SYNTHETIC_VOCAB_SIZE",
    "ColumnNames",
    "PreferenceDataError",
    "PreferenceDataModule",
    "SplitStats",
    "SyntheticConfig",
    "collate_preference_pairs",
    "gold_reward",
]

_SOURCES = {
    "SYNTHETIC_VOCAB_SIZE": "betadpo_lightning.data.synthetic",
    "ColumnNames": "betadpo_lightning.data.formats",
    "PreferenceDataError": "betadpo_lightning.data.errors",
    "PreferenceDataModule": "betadpo_lightning.data.datamodule",
    "SplitStats": "betadpo_lightning.data.stats",
    "SyntheticConfig": "betadpo_lightning.data.synthetic",
    "collate_preference_pairs": "betadpo_lightning.data.collate",
    "gold_reward": "betadpo_lightning.data.synthetic",
}
"""The module each public name is imported from on first use."""


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
