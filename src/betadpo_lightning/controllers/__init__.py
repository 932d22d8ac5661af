"""β controllers: rules that turn a micro-batch's DPO margins into β and a keep-mask."""

from betadpo_lightning.controllers.base import BetaController, BetaStep
from betadpo_lightning.controllers.beta_dpo import BetaDPOController
from betadpo_lightning.controllers.constant import ConstantBetaController
from betadpo_lightning.controllers.sampling import derive_seed, gumbel_topk_mask

__all__ = [
    "BetaController",
    "BetaDPOController",
    "BetaStep",
    "ConstantBetaController",
    "derive_seed",
    "gumbel_topk_mask",
]
