"""The training progress bar: optimizer steps out of ``max_steps`` when training is bounded by steps."""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from typing_extensions import override

__all__ = ["StepProgressBar"]


class StepProgressBar(TQDMProgressBar):
    """A :class:`~lightning.pytorch.callbacks.TQDMProgressBar` that counts optimizer steps, without ``v_num``.

    With ``trainer.max_steps`` set (as in every config here), one bar covers the whole fit:
    ``step 120/300  40%|████      | [00:10<00:15, 11.5step/s, train/loss=0.61]``, resumed runs starting at their
    step, instead of one bar per epoch with ``Epoch 1/-2`` (epochs are unbounded when training by steps). Without
    ``max_steps`` it is Lightning's per-epoch bar. The logger's version number (``v_num``) is left out: the run
    summary prints the log folder.

    Args:
        refresh_rate: batches between refreshes (as in ``TQDMProgressBar``).
        process_position: the bar's row, for several bars at once.
        leave: keep the bar of each epoch (per-epoch mode only).
    """

    STEP_BAR_FORMAT = "step {n_fmt}/{total_fmt} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)

    def _by_steps(self) -> bool:
        return self._trainer is not None and self.trainer.max_steps > 0

    @override
    def init_train_tqdm(self) -> Tqdm:
        if not self._by_steps():
            return super().init_train_tqdm()
        return Tqdm(
            desc="step",
            position=(2 * self.process_position),
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            unit="step",
            bar_format=self.STEP_BAR_FORMAT,
        )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self._by_steps():
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.initial = trainer.global_step  # a resumed run starts at its step; the rate counts this run's steps
            self._show(bar, trainer.global_step)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self._by_steps():
            super().on_train_epoch_start(trainer, *args)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._by_steps():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        bar = self.train_progress_bar
        if self._should_update(trainer.global_step, bar.total) and bar.n != trainer.global_step:
            self._show(bar, trainer.global_step)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._by_steps():
            super().on_train_epoch_end(trainer, pl_module)
        elif not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, int | str | float | dict]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    @staticmethod
    def _show(bar: Tqdm, step: int) -> None:
        if not bar.disable:
            bar.n = step
            bar.refresh()
