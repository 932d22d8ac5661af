"""Lightning callbacks: dynamic β, the protocol modules follow to use it, metric reporting, checkpoints."""

from betadpo_lightning.callbacks.checkpoints import PreferenceCheckpoint
from betadpo_lightning.callbacks.dynamic_beta import DynamicBetaCallback
from betadpo_lightning.callbacks.protocol import BetaDecision, BetaProvider, SupportsBetaProvider, static_decision
from betadpo_lightning.callbacks.reporting import PreferenceReporter

__all__ = [
    "BetaDecision",
    "BetaProvider",
    "DynamicBetaCallback",
    "PreferenceCheckpoint",
    "PreferenceReporter",
    "SupportsBetaProvider",
    "static_decision",
]
