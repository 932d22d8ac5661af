"""Lightning callbacks: the dynamic-β (β-DPO) callback and the protocol modules follow to use it."""

from betadpo_lightning.callbacks.dynamic_beta import DynamicBetaCallback
from betadpo_lightning.callbacks.protocol import (
    STEP_OUTPUT_KEYS,
    BetaDecision,
    BetaProvider,
    SupportsBetaProvider,
    static_decision,
)

__all__ = [
    "STEP_OUTPUT_KEYS",
    "BetaDecision",
    "BetaProvider",
    "DynamicBetaCallback",
    "SupportsBetaProvider",
    "static_decision",
]
