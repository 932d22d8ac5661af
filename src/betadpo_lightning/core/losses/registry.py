"""Short names of the loss components, as configs and the command line may write them (``model.loss: ipo``).

A config may also name any :class:`~betadpo_lightning.core.losses.base.PreferenceLoss` by ``class_path`` with
``init_args``; a short name is that class with its defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from betadpo_lightning.core.losses.anchored import APODownLoss, APOZeroLoss, BCOPairLoss, NCALoss, SPPOHardLoss
from betadpo_lightning.core.losses.aot import AOTLoss, AOTUnpairedLoss
from betadpo_lightning.core.losses.base import PreferenceLoss, loss_from_config
from betadpo_lightning.core.losses.classic import HingeLoss, IPOLoss, RobustLoss, SigmoidLoss
from betadpo_lightning.core.losses.mallows_po import MallowsPhiLoss, MallowsThetaIPOLoss, MallowsThetaLoss
from betadpo_lightning.core.losses.nll import NLLLoss
from betadpo_lightning.core.losses.orpo import ORPOLoss
from betadpo_lightning.core.losses.simpo import CPOLoss, SimPOLoss
from betadpo_lightning.core.losses.variants import DiscoPOPLoss, EXOPairLoss, SigmoidNormLoss

__all__ = ["LOSSES", "resolve_loss"]

LOSSES: dict[str, type[PreferenceLoss]] = {
    "sigmoid": SigmoidLoss,
    "robust": RobustLoss,
    "ipo": IPOLoss,
    "hinge": HingeLoss,
    "mallows_theta": MallowsThetaLoss,
    "mallows_theta_ipo": MallowsThetaIPOLoss,
    "mallows_phi": MallowsPhiLoss,
    "simpo": SimPOLoss,
    "cpo": CPOLoss,
    "orpo": ORPOLoss,
    "sft": NLLLoss,
    "sigmoid_norm": SigmoidNormLoss,
    "apo_zero": APOZeroLoss,
    "apo_down": APODownLoss,
    "nca_pair": NCALoss,
    "bco_pair": BCOPairLoss,
    "exo_pair": EXOPairLoss,
    "sppo_hard": SPPOHardLoss,
    "discopop": DiscoPOPLoss,
    "aot": AOTLoss,
    "aot_unpaired": AOTUnpairedLoss,
}
"""Loss classes by short name."""


def resolve_loss(loss: PreferenceLoss | str | Mapping[str, Any]) -> PreferenceLoss:
    """A loss component from itself, a short name of :data:`LOSSES`, or a ``class_path``/``init_args`` mapping.

    Raises:
        ValueError: for an unknown name, naming the known ones.

    Example:
        >>> resolve_loss("ipo")
        IPOLoss()
    """
    if isinstance(loss, PreferenceLoss):
        return loss
    if isinstance(loss, Mapping):
        return loss_from_config(loss)
    if loss in LOSSES:
        return LOSSES[loss]()
    raise ValueError(f"Unknown loss {loss!r}: expected one of {sorted(LOSSES)} or a PreferenceLoss class_path.")
