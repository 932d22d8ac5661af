"""Lightning callbacks: dynamic β, the protocol modules follow to use it, metric reporting, checkpoints, samples."""

from betadpo_lightning.callbacks.checkpoints import PreferenceCheckpoint
from betadpo_lightning.callbacks.dynamic_beta import DynamicBetaCallback
from betadpo_lightning.callbacks.generations import SampleGenerations
from betadpo_lightning.training.decision import BetaDecision, BetaProvider, SupportsBetaProvider, static_decision
from betadpo_lightning.training.reporting import PreferenceReporter

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
