r"""Losses of the DPO family and MallowsPO, as components and as pure functions; implicit rewards and margins.

Components (:class:`PreferenceLoss` subclasses) carry their hyperparameters and declare what they need; the pure
functions beside them stay for direct use. Every loss returns one value per preference pair, shape ``(B,)``;
nothing is reduced, logged or communicated here.
"""

from betadpo_lightning.core.losses.anchored import APODownLoss, APOZeroLoss, BCOPairLoss, NCALoss, SPPOHardLoss
from betadpo_lightning.core.losses.aot import AOTLoss, AOTUnpairedLoss
from betadpo_lightning.core.losses.base import PreferenceLoss, loss_from_config
from betadpo_lightning.core.losses.classic import HingeLoss, IPOLoss, RobustLoss, SigmoidLoss
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
from betadpo_lightning.core.losses.mallows_po import MallowsPhiLoss, MallowsThetaIPOLoss, MallowsThetaLoss
from betadpo_lightning.core.losses.mixture import LossMixture
from betadpo_lightning.core.losses.nll import NLLLoss
from betadpo_lightning.core.losses.orpo import ORPOLoss
from betadpo_lightning.core.losses.registry import LOSSES, resolve_loss
from betadpo_lightning.core.losses.simpo import CPOLoss, SimPOLoss
from betadpo_lightning.core.losses.variants import DiscoPOPLoss, EXOPairLoss, SigmoidNormLoss
from betadpo_lightning.core.losses.wpo import WPOWeighted

__all__ = [
    "LOSSES",
    "AOTLoss",
    "AOTUnpairedLoss",
    "APODownLoss",
    "APOZeroLoss",
    "BCOPairLoss",
    "Beta",
    "CPOLoss",
    "DiscoPOPLoss",
    "EXOPairLoss",
    "HingeLoss",
    "IPOLoss",
    "LossMixture",
    "MallowsPhiLoss",
    "MallowsThetaIPOLoss",
    "MallowsThetaLoss",
    "NCALoss",
    "NLLLoss",
    "ORPOLoss",
    "PreferenceLoss",
    "RobustLoss",
    "SPPOHardLoss",
    "SigmoidLoss",
    "SigmoidNormLoss",
    "SimPOLoss",
    "WPOWeighted",
    "dpo_loss",
    "dpo_margins",
    "hinge_loss",
    "implicit_rewards",
    "ipo_loss",
    "loss_from_config",
    "mallows_phi_link",
    "mallows_phi_log_link",
    "mallows_phi_loss",
    "mallows_theta_ipo_loss",
    "mallows_theta_loss",
    "mallows_weight",
    "pair_margins",
    "pair_rewards",
    "resolve_loss",
    "robust_loss",
    "sigmoid_loss",
]
