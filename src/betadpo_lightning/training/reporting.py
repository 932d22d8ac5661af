"""Windowed logging of the preference metrics, shared by the β callback and by a module that has none.

Training values are accumulated over every micro-batch since the last logging step and written at Lightning's own
logging steps: right after an optimizer step that makes ``global_step`` a multiple of ``Trainer(log_every_n_steps)``
(or when the trainer is stopping), which is when Lightning writes step metrics to its loggers, with or without
gradient accumulation. Updates are local; the only collectives are the torchmetrics ``compute()`` calls at those
steps (the same steps on every rank). Evaluation values (``val``, ``test``) cover the whole evaluation run.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
import torch
from torch import Tensor

from betadpo_lightning.core.types import PairData
from betadpo_lightning.training.metrics import MeanOfSums, PreferenceMetrics

__all__ = ["STAGES", "PreferenceReporter", "evaluation_stage"]

STAGES = ("train", "val", "test")
"""The stages whose preference metrics are reported, as they prefix the logged keys."""


def evaluation_stage(trainer: pl.Trainer) -> str:
    """The key prefix of the evaluation the trainer is running: ``test`` while testing, else ``val``."""
    return "test" if trainer.testing else "val"


class PreferenceReporter:
    """Preference metrics of the ``train``, ``val`` and ``test`` stages plus windowed training scalars (``loss``, ...).

    Keys logged: ``{stage}/{key}`` for every key of :meth:`PreferenceMetrics.compute`, and ``train/{name}`` for every
    scalar passed to :meth:`update_scalars` (window means over micro-batches and ranks).
    """

    def __init__(self) -> None:
        self.metrics = {stage: PreferenceMetrics() for stage in STAGES}
        self.scalars: dict[str, MeanOfSums] = {}
        self._device = torch.device("cpu")
        self._last_step: int | None = None

    def to(self, device: torch.device) -> PreferenceReporter:
        """Move every metric state to ``device`` (the metrics are not submodules of any LightningModule)."""
        self._device = torch.device(device)
        for metric in [*self.metrics.values(), *self.scalars.values()]:
            metric.to(self._device)
        return self

    def update_pairs(self, stage: str, pairs: PairData, beta: float) -> None:
        """Add a batch of pairs to the ``stage`` window; rewards are scaled by ``beta`` (β0)."""
        self.metrics[stage].update(pairs, beta)

    def update_scalars(self, values: Mapping[str, Tensor]) -> None:
        """Add one value per name (0-d or any shape: its elements count as samples) to the training window."""
        for name, value in values.items():
            if name not in self.scalars:
                self.scalars[name] = MeanOfSums().to(self._device)
            self.scalars[name].update(value.detach())

    def on_train_start(self, trainer: pl.Trainer) -> None:
        """Start the first window at the current step (0, or the step a run resumes from)."""
        self._last_step = trainer.global_step
        self._reset_train()

    def log_train_if_due(
        self, trainer: pl.Trainer, module: pl.LightningModule, prog_bar: tuple[str, ...] = (), pairs: bool = True
    ) -> bool:
        """Log and reset the training window if Lightning writes step metrics after this batch; call every batch.

        Args:
            trainer: the trainer.
            module: the module to log through.
            prog_bar: scalar names also shown in the progress bar.
            pairs: whether this reporter logs the preference metrics (must be the same on every rank).

        Returns:
            Whether the window was logged.
        """
        step, last = trainer.global_step, self._last_step
        self._last_step = step
        every = trainer.log_every_n_steps
        if last is None or step == last or every <= 0 or not (step % every == 0 or trainer.should_stop):
            return False
        values = self._compute("train", pairs and (self.metrics["train"].num_batches > 0 or trainer.world_size > 1))
        values.update({f"train/{name}": metric.compute() for name, metric in self.scalars.items()})
        shown = {f"train/{name}" for name in prog_bar}
        for key, value in values.items():
            module.log(key, value, on_step=True, on_epoch=False, batch_size=1, prog_bar=key in shown)
        self._reset_train()
        return True

    def log_evaluation(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        """Log the window of an evaluation stage (``val`` or ``test``) at the end of its run, and reset it.

        A collective call under DDP (every rank must call it), like :meth:`PreferenceMetrics.compute`.
        """
        values = self._compute(stage, self.metrics[stage].num_batches > 0 or trainer.world_size > 1)
        module.log_dict(values, on_step=False, on_epoch=True, batch_size=1)
        self.metrics[stage].reset()

    def reset_evaluation(self, stage: str) -> None:
        """Start a new window of an evaluation stage (``val`` or ``test``)."""
        self.metrics[stage].to(self._device)
        self.metrics[stage].reset()

    def _compute(self, stage: str, any_data: bool) -> dict[str, Tensor]:
        if not any_data:  # nothing seen by this only rank: log nothing rather than zeros
            return {}
        return {f"{stage}/{key}": value for key, value in self.metrics[stage].compute().items()}

    def _reset_train(self) -> None:
        self.metrics["train"].reset()
        for metric in self.scalars.values():
            metric.reset()
