"""Preference data: loading, format handling, exact tokenization, collation and a built-in synthetic dataset."""

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
