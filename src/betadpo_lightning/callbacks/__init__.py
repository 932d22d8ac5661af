"""Lightning callbacks: dynamic β, checkpoints, generations during training."""

from betadpo_lightning.callbacks.checkpoints import PreferenceCheckpoint
from betadpo_lightning.callbacks.dynamic_beta import DynamicBetaCallback
from betadpo_lightning.callbacks.generations import SampleGenerations

__all__ = ["DynamicBetaCallback", "PreferenceCheckpoint", "SampleGenerations"]
