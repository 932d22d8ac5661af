"""Lightning callbacks: dynamic β, the protocol modules follow to use it, metric reporting, checkpoints, samples."""

from betadpo_lightning.callbacks.checkpoints import PreferenceCheckpoint
from betadpo_lightning.callbacks.dynamic_beta import DynamicBetaCallback
from betadpo_lightning.callbacks.protocol import BetaDecision, BetaProvider, SupportsBetaProvider, static_decision
from betadpo_lightning.callbacks.reporting import PreferenceReporter
from betadpo_lightning.callbacks.sampling import SampleGenerations

__all__ = [
    "BetaDecision",
    "BetaProvider",
    "DynamicBetaCallback",
    "PreferenceCheckpoint",
    "PreferenceReporter",
    "SampleGenerations",
    "SupportsBetaProvider",
    "static_decision",
]
