r"""The negative log-likelihood of the chosen response as a loss component (TRL's ``sft`` loss type).

Added to a preference loss through :class:`~betadpo_lightning.core.losses.mixture.LossMixture` it gives RPO
(``sigmoid`` + ``sft``, Pang et al. 2024, arXiv 2404.19733) or MPO (``sigmoid`` + ``bco_pair`` + ``sft``, Wang et al.
2024, arXiv 2411.10442); CPO and ORPO carry their own NLL term (:func:`chosen_nll`).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from betadpo_lightning.core.losses.base import PreferenceLoss
from betadpo_lightning.core.losses.dpo import Beta, _compute_dtype
from betadpo_lightning.core.types import PairData

__all__ = ["NLLLoss", "chosen_nll"]


def chosen_nll(pairs: PairData, average_logps: bool) -> Tensor:
    """Token-mean NLL of each chosen response, ``(B,)``: ``−pc`` if averaged, else ``−pc / chosen_lengths``.

    Args:
        pairs: the pairs; with summed log-probabilities they must hold the ``lengths`` extra.
        average_logps: whether ``pairs`` holds length-averaged log-probabilities.

    Raises:
        ValueError: for summed log-probabilities without lengths.

    Example:
        >>> import torch
        >>> lp, n = torch.tensor([-6.0]), torch.tensor([3.0])
        >>> chosen_nll(PairData(lp, lp, lp, lp, chosen_lengths=n, rejected_lengths=n), average_logps=False)
        tensor([2.])
    """
    pc = _compute_dtype(pairs.policy_chosen_logps)
    if average_logps:
        return -pc
    if pairs.chosen_lengths is None:
        raise ValueError("The NLL of summed log-probabilities needs the response lengths (extra 'lengths').")
    return -pc / pairs.chosen_lengths.to(pc.dtype).clamp(min=1.0)


class NLLLoss(PreferenceLoss):
    r"""Token-mean negative log-likelihood of the chosen response, TRL's ``sft``: :math:`-\log\pi(y_w|x)/|y_w|`.

    Computed from the pairs: ``−pc / chosen_lengths`` for summed log-probabilities (lengths clamped to ≥ 1, as TRL
    does), ``−pc`` for length-averaged ones. It reads neither β nor the reference (``reads_beta`` and
    ``needs_reference`` are ``False``). TRL's ``sft`` averages over every chosen token of the batch (longer responses
    weigh more); here each pair's NLL is its own token mean, and the caller averages pairs.

    Args:
        average_logps: whether the pairs hold length-averaged log-probabilities (to join a mixture with SimPO, IPO or
            ORPO, which all use them); with summed ones (default) the loss reads the ``lengths`` extra.

    Example:
        >>> import torch
        >>> lp = torch.tensor([-1.5])
        >>> NLLLoss(average_logps=True)(PairData(lp, lp, lp, lp), beta=0.1)
        tensor([1.5000])
    """

    needs_reference = False
    beta_scales_margin = False
    reads_beta = False
    requires: ClassVar[frozenset[str]] = frozenset({"lengths"})

    def __init__(self, average_logps: bool = False) -> None:
        self.average_logps = bool(average_logps)  # type: ignore[misc]
        self.requires = frozenset() if self.average_logps else frozenset({"lengths"})  # type: ignore[misc]

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` token-mean NLL of the chosen responses; ``margins`` and ``beta`` are not read."""
        return chosen_nll(pairs, self.average_logps)
