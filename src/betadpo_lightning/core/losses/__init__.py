r"""Per-pair losses of the DPO family and MallowsPO, implicit rewards and margins (pure tensor math).

Every loss returns one value per preference pair, shape ``(B,)``; nothing is reduced, logged or communicated here.
"""

from betadpo_lightning.core.losses.dpo import (
    Beta,
    dpo_loss,
    dpo_margins,
    hinge_loss,
    implicit_rewards,
    ipo_loss,
    pair_margins,
    pair_rewards,
    robust_loss,
    sigmoid_loss,
)
from betadpo_lightning.core.losses.mallows import (
    mallows_phi_link,
    mallows_phi_log_link,
    mallows_phi_loss,
    mallows_theta_ipo_loss,
    mallows_theta_loss,
    mallows_weight,
)
from betadpo_lightning.core.losses.registry import PAIR_LOSSES, PairLoss

__all__ = [
    "PAIR_LOSSES",
    "Beta",
    "PairLoss",
    "dpo_loss",
    "dpo_margins",
    "hinge_loss",
    "implicit_rewards",
    "ipo_loss",
    "mallows_phi_link",
    "mallows_phi_log_link",
    "mallows_phi_loss",
    "mallows_theta_ipo_loss",
    "mallows_theta_loss",
    "mallows_weight",
    "pair_margins",
    "pair_rewards",
    "robust_loss",
    "sigmoid_loss",
]
