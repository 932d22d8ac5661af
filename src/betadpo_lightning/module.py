"""Public import path of :class:`~betadpo_lightning.training.module.PreferenceModule`."""

from betadpo_lightning.training.module import PreferenceModule

__all__ = ["PreferenceModule"]
