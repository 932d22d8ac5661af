"""The one reporter of a preference module: its metrics per stage and the windowed training scalars.

Training values are accumulated over every micro-batch since the last logging step and written at Lightning's own
logging steps: right after an optimizer step that makes ``global_step`` a multiple of ``Trainer(log_every_n_steps)``
(or when the trainer is stopping), which is when Lightning writes step metrics to its loggers, with or without
gradient accumulation. Updates are local; the only collectives are the torchmetrics ``compute()`` calls at those
steps (the same steps on every rank). Evaluation values (``val``, ``test``) cover the whole evaluation run; they are
logged as synced (``sync_dist`` with ``max`` of the values every rank holds alike, which leaves them unchanged), so
Lightning does not ask for ``sync_dist=True`` under DDP.

The reporter is an ``nn.Module`` whose metrics are registered submodules, so it moves with the module that holds it.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from betadpo_lightning.core.types import PairData
from betadpo_lightning.training.decision import BetaDecision
from betadpo_lightning.training.metrics import PreferenceMetrics, exact_mean

__all__ = ["STAGES", "PreferenceReporter", "evaluation_stage"]

STAGES = ("train", "val", "test")
"""The stages whose preference metrics are reported, as they prefix the logged keys."""


def evaluation_stage(trainer: pl.Trainer) -> str:
    """The key prefix of the evaluation the trainer is running: ``test`` while testing, else ``val``."""
    return "test" if trainer.testing else "val"


class PreferenceReporter(nn.Module):
    """Preference metrics of the ``train``, ``val`` and ``test`` stages, the loss, and β with its statistics.

    Keys logged: ``{stage}/{key}`` for every key of :meth:`PreferenceMetrics.compute`, ``{stage}/loss`` (training:
    window mean of the micro-batch losses; evaluation: mean over every counted pair), ``val/pairs`` and
    ``test/pairs`` (how many pairs the evaluation values cover), ``train/beta`` (mean β of the window) and
    ``train/beta/<stat>`` for every statistic a decision reports.

    A value with nothing to average is NaN, never 0: an evaluation whose pairs were all left out (non-finite
    margins, counted by the module in ``{stage}/nonfinite_pairs``) logs NaN for every metric, with ``pairs`` 0 and
    a warning. A ``ModelCheckpoint`` monitoring such a value counts NaN as the worst score (Lightning replaces it
    by ±inf), so it never becomes the best checkpoint while a finite one exists.
    """

    def __init__(self) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict({f"{stage}_": PreferenceMetrics() for stage in STAGES})  # "train" is a method
        self.losses = nn.ModuleDict({f"{stage}_": exact_mean() for stage in STAGES})
        self.scalars = nn.ModuleDict()  # train/<name> window means, created on first use
        self._last_step: int | None = None

    def record(
        self, stage: str, pairs: PairData, margins: Tensor, beta0: float, decision: BetaDecision, losses: Tensor
    ) -> None:
        """Add one batch: its pairs and margins ``(B,)``, the decision and the loss.

        Args:
            stage: ``train``, ``val`` or ``test``.
            pairs: the batch's pairs (detached inside).
            margins: their margins, ``(B,)``.
            beta0: the base β that scales the logged rewards.
            decision: the β decision of the batch (its β and statistics are logged in training).
            losses: training: the micro-batch's scalar loss; evaluation: the counted pairs' losses ``(B,)``.
        """
        self.metrics[f"{stage}_"].update(pairs, margins.detach(), beta0)
        self.losses[f"{stage}_"].update(losses.detach())
        if stage == "train":
            self._update_scalars({"beta": decision.beta.mean()})
            self._update_scalars({f"beta/{name}": value for name, value in decision.stats.items()})

    def _update_scalars(self, values: Mapping[str, Tensor]) -> None:
        for name, value in values.items():
            key = name.replace("/", "__")  # a module name holds neither "/" nor "."
            if key not in self.scalars:
                self.scalars[key] = exact_mean().to(self.losses["train_"].device)
            self.scalars[key].update(value.detach())

    def on_train_start(self, trainer: pl.Trainer) -> None:
        """Start the first window at the current step (0, or the step a run resumes from)."""
        self._last_step = trainer.global_step
        self._reset("train")

    def log_train_if_due(self, trainer: pl.Trainer, module: pl.LightningModule, extra: Mapping[str, Tensor]) -> bool:
        """Log and reset the training window if Lightning writes step metrics after this batch; call every batch.

        Args:
            trainer: the trainer.
            module: the module to log through.
            extra: values logged with the window (e.g. ``train/skipped_steps``).

        Returns:
            Whether the window was logged.
        """
        step, last = trainer.global_step, self._last_step
        self._last_step = step
        every = trainer.log_every_n_steps
        if last is None or step == last or every <= 0 or not (step % every == 0 or trainer.should_stop):
            return False
        values = self._compute("train", trainer)
        values.update({f"train/{key.replace('__', '/')}": metric.compute() for key, metric in self.scalars.items()})
        values.update(extra)
        for key, value in values.items():
            value = value.float() if isinstance(value, Tensor) else value
            module.log(key, value, on_step=True, on_epoch=False, batch_size=1, prog_bar=key == "train/loss")
        self._reset("train")
        return True

    def log_evaluation(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        """Log an evaluation stage's values (``val`` or ``test``) at the end of its run; a collective under DDP."""
        values = {key: value.float() for key, value in self._compute(stage, trainer).items()}
        if values:
            values[f"{stage}/pairs"] = self.metrics[f"{stage}_"].pairs.compute().float()
            if not bool(values[f"{stage}/pairs"] > 0):
                rank_zero_warn(
                    f"No {stage} pair was counted (every margin was non-finite or every row lacked a response token; "
                    f"see `{stage}/nonfinite_pairs`): every `{stage}/` metric is NaN."
                )
        # The values are torchmetrics' global ones, the same on every rank. `sync_dist` with `max` tells Lightning so
        # (it warns about epoch-level values that are not synced) and gives them back exactly (a mean over the ranks
        # would round them when the number of ranks is not a power of two).
        module.log_dict(values, on_step=False, on_epoch=True, batch_size=1, sync_dist=True, reduce_fx="max")
        self._reset(stage)

    def reset_evaluation(self, stage: str) -> None:
        """Start a new window of an evaluation stage (``val`` or ``test``)."""
        self._reset(stage)

    def _compute(self, stage: str, trainer: pl.Trainer) -> dict[str, Tensor]:
        if self.metrics[f"{stage}_"].num_batches == 0 and trainer.world_size == 1:  # nothing seen: log nothing
            return {}
        values = {f"{stage}/{key}": value for key, value in self.metrics[f"{stage}_"].compute().items()}
        values[f"{stage}/loss"] = self.losses[f"{stage}_"].compute()
        return values

    def _reset(self, stage: str) -> None:
        self.metrics[f"{stage}_"].reset()
        self.losses[f"{stage}_"].reset()
        if stage == "train":
            for metric in self.scalars.values():
                metric.reset()
