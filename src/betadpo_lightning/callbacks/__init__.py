"""Lightning callbacks: the dynamic-β callback, the protocol modules follow to use it, and metric reporting."""

from betadpo_lightning.callbacks.dynamic_beta import DynamicBetaCallback
from betadpo_lightning.callbacks.protocol import BetaDecision, BetaProvider, SupportsBetaProvider, static_decision
from betadpo_lightning.callbacks.reporting import PreferenceReporter

__all__ = [
    "BetaDecision",
    "BetaProvider",
    "DynamicBetaCallback",
    "PreferenceReporter",
    "SupportsBetaProvider",
    "static_decision",
]
