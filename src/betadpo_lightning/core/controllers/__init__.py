"""β controllers: rules that turn a micro-batch's pairs into β and a keep-mask (no Lightning, no collectives)."""

from betadpo_lightning.core.controllers.base import BetaController, BetaStep
from betadpo_lightning.core.controllers.beta_dpo import BetaDPOController
from betadpo_lightning.core.controllers.constant import ConstantBetaController
from betadpo_lightning.core.controllers.epsilon import EpsilonBetaController, perturbation_signs
from betadpo_lightning.core.controllers.gumbel import derive_seed, gumbel_topk_mask

__all__ = [
    "BetaController",
    "BetaDPOController",
    "BetaStep",
    "ConstantBetaController",
    "EpsilonBetaController",
    "derive_seed",
    "gumbel_topk_mask",
    "perturbation_signs",
]
