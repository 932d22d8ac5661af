"""The evaluation stages of a preference module: validation and test, the same loss and metrics, exact.

Both stages use the fixed β0 (every pair kept, no filtering), run no collective per batch and log under their own
prefix (``val/`` or ``test/``): the loss as a sum/count metric reduced once at the end of the run, the preference
metrics through the reporter (the module's own without a β provider, the provider's otherwise), and the number of
pairs left out for a non-finite margin or a row without response token. The samples an evaluation sampler repeats
to even out the ranks are flagged (``is_padding``) and left out too, so every pair counts exactly once whatever
the batch size and the number of ranks.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor
from typing_extensions import override

from betadpo_lightning.core.types import PairData
from betadpo_lightning.training.decision import BetaProvider
from betadpo_lightning.training.metrics import MeanOfSums
from betadpo_lightning.training.reporting import PreferenceReporter

__all__ = ["PreferenceEvaluation"]


class PreferenceEvaluation(pl.LightningModule):
    """``validation_step`` and ``test_step`` of a preference module, and the logging at the ends of their runs.

    The subclass sets ``reporter``, ``eval_loss`` and ``beta_provider`` and implements ``_step(batch, stage)``,
    which calls :meth:`_evaluated_pairs` and :meth:`_log_evaluation_loss` for the ``val`` and ``test`` stages.
    """

    reporter: PreferenceReporter
    eval_loss: MeanOfSums
    beta_provider: BetaProvider | None

    def _step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:  # pragma: no cover - subclass
        raise NotImplementedError

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "val")

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "test")

    def _evaluated_pairs(
        self, batch: dict[str, Tensor], pairs: PairData, margins: Tensor, finite: Tensor, stage: str
    ) -> tuple[PairData, Tensor]:
        """The pairs an evaluation counts: not the padding that evens out the ranks, not a non-finite pair.

        Non-finite pairs are counted in ``{stage}/nonfinite_pairs`` (summed over the run and the ranks).

        Args:
            batch: the batch; ``is_padding`` ``(B,)`` flags the repeated samples (none when absent).
            pairs: the batch's pairs, ``(B,)`` fields.
            margins: their margins, ``(B,)``.
            finite: whether each pair's margin is finite and both its rows hold a response token, ``(B,)``.
            stage: ``val`` or ``test``.

        Returns:
            The kept pairs and their margins, ``(K,)``.
        """
        padding = batch.get("is_padding", torch.zeros_like(finite))  # (B,)
        self.log(
            f"{stage}/nonfinite_pairs",
            (~finite & ~padding).sum().float(),
            on_step=False,
            on_epoch=True,
            reduce_fx="sum",
            sync_dist=True,
            batch_size=len(pairs),
        )
        keep = finite & ~padding
        return pairs.subset(keep), margins[keep]

    def _log_evaluation_loss(self, per_pair: Tensor, stage: str) -> None:
        """Add the counted pairs' losses ``(K,)`` to ``{stage}/loss``, their mean over the run and every rank.

        One sum-reduction at the end of the run makes it exact whatever the batching (Lightning's own
        ``sync_dist`` epoch mean averages the integer pair counts with a floor division).
        """
        self.eval_loss.update(per_pair)
        self.log(f"{stage}/loss", self.eval_loss, on_step=False, on_epoch=True)

    # ----------------------------------------------------------------- logging
    def _start_evaluation(self, stage: str) -> None:
        self.reporter.to(self.device).reset_evaluation(stage)

    def _end_evaluation(self, stage: str) -> None:
        if self.beta_provider is None:  # a β provider logs the metrics of the pairs it was given
            self.reporter.log_evaluation(self.trainer, self, stage)

    @override
    def on_validation_start(self) -> None:
        self._start_evaluation("val")

    @override
    def on_validation_epoch_end(self) -> None:
        self._end_evaluation("val")

    @override
    def on_test_start(self) -> None:
        self._start_evaluation("test")

    @override
    def on_test_epoch_end(self) -> None:
        self._end_evaluation("test")
