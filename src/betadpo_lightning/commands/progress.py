"""The training progress bar: optimizer steps out of ``max_steps``; plain lines when the output is not a terminal."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from typing_extensions import override

__all__ = ["VALIDATION_METRICS", "StepProgressBar"]

VALIDATION_METRICS = ("val/loss", "val/rewards/accuracies")
"""The validation values a plain progress line shows after each validation (those logged)."""


class StepProgressBar(TQDMProgressBar):
    """A :class:`~lightning.pytorch.callbacks.TQDMProgressBar` that counts optimizer steps, without ``v_num``.

    With ``trainer.max_steps`` set (as in every config here), one bar covers the whole fit:
    ``step 120/300  40%|████      | [00:10<00:15, 11.5step/s, train/loss=0.61]``, resumed runs starting at their
    step, instead of one bar per epoch with ``Epoch 1/-2`` (epochs are unbounded when training by steps). Without
    ``max_steps`` it is Lightning's per-epoch bar. The logger's version number (``v_num``) is left out: the run
    summary prints the log folder.

    When standard output is not a terminal (piped to a file or a job's log), a bar would be redrawn as a new line at
    every refresh; instead no bar is drawn, and one line is printed per logging step (``trainer.log_every_n_steps``
    optimizer steps, and the last step), with the values the bar would show, and one after each validation::

        step 120/300 (40%) elapsed 00:10, left 00:15, 11.5 step/s, train/loss=0.61
        validation at step 200: val/loss=0.5793, val/rewards/accuracies=0.8164

    Args:
        refresh_rate: batches between refreshes (as in ``TQDMProgressBar``).
        process_position: the bar's row, for several bars at once.
        leave: keep the bar of each epoch (per-epoch mode only).
        plain: print plain lines instead of bars (``None``: when standard output is not a terminal).
    """

    STEP_BAR_FORMAT = "step {n_fmt}/{total_fmt} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def __init__(
        self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False, plain: bool | None = None
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.plain = _not_a_terminal() if plain is None else plain
        self._start: tuple[int, float] | None = None  # (step, time) when this fit's training started
        self._due: int | None = None  # the step whose line is printed once its values are logged

    def _by_steps(self) -> bool:
        return self._trainer is not None and self.trainer.max_steps > 0

    @override
    def init_sanity_tqdm(self) -> Tqdm:
        return _silent() if self.plain else super().init_sanity_tqdm()

    @override
    def init_validation_tqdm(self) -> Tqdm:
        return _silent() if self.plain else super().init_validation_tqdm()

    @override
    def init_test_tqdm(self) -> Tqdm:
        return _silent() if self.plain else super().init_test_tqdm()

    @override
    def init_predict_tqdm(self) -> Tqdm:
        return _silent() if self.plain else super().init_predict_tqdm()

    @override
    def init_train_tqdm(self) -> Tqdm:
        if self.plain:
            return _silent()
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
        self._start, self._due = (trainer.global_step, time.monotonic()), None
        if self._by_steps() and not self.plain:
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.initial = trainer.global_step  # a resumed run starts at its step; the rate counts this run's steps
            self._show(bar, trainer.global_step)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self._by_steps():
            super().on_train_epoch_start(trainer, *args)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._print_due(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.plain:
            step, every = trainer.global_step, max(trainer.log_every_n_steps, 1)
            last = 0 < trainer.max_steps <= step
            if self._start is not None and step != self._start[0] and (step % every == 0 or last):
                self._due = step  # printed at the next hook, once the module has logged this step's values
            return
        if not self._by_steps():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        bar = self.train_progress_bar
        if self._should_update(trainer.global_step, bar.total) and bar.n != trainer.global_step:
            self._show(bar, trainer.global_step)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.plain:
            self._print_due(trainer, pl_module)
        elif not self._by_steps():
            super().on_train_epoch_end(trainer, pl_module)
        elif not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print_due(trainer, pl_module)
        super().on_train_end(trainer, pl_module)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print_due(trainer, pl_module)
        super().on_validation_start(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.plain and not self.is_disabled and trainer.state.fn == "fit" and not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            shown = [f"{name}={_value(metrics[name])}" for name in VALIDATION_METRICS if name in metrics]
            print(f"validation at step {trainer.global_step}: {', '.join(shown) or 'done'}", flush=True)

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, int | str | float | dict]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    def _print_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Print the plain line of the logging step just ended, if any (plain mode, rank zero)."""
        step, self._due = self._due, None
        if step is None or self.is_disabled or self._start is None:
            return
        print(self.plain_line(step, trainer.max_steps, time.monotonic() - self._start[1], step - self._start[0],
                              self.get_metrics(trainer, pl_module)), flush=True)  # fmt: skip

    @staticmethod
    def plain_line(step: int, max_steps: int, elapsed: float, steps_done: int, metrics: dict[str, Any]) -> str:
        """One progress line: the step, elapsed and remaining time, the rate and the progress-bar values.

        Example:
            >>> StepProgressBar.plain_line(120, 300, 10.4, 120, {"train/loss": 0.6123})
            'step 120/300 (40%) elapsed 00:10, left 00:15, 11.5 step/s, train/loss=0.6123'
            >>> StepProgressBar.plain_line(40, -1, 2.0, 40, {})
            'step 40 elapsed 00:02, 20.0 step/s'
        """
        rate = steps_done / elapsed if elapsed > 0 else math.inf
        parts = [f"step {step}/{max_steps} ({100 * step / max_steps:.0f}%)" if max_steps > 0 else f"step {step}"]
        parts[0] += f" elapsed {Tqdm.format_interval(elapsed)}"
        if max_steps > 0 and math.isfinite(rate) and rate > 0:
            parts.append(f"left {Tqdm.format_interval((max_steps - step) / rate)}")
        if math.isfinite(rate):
            parts.append(f"{rate:.1f} step/s" if rate >= 1 or rate == 0 else f"{1 / rate:.1f} s/step")
        parts += [f"{name}={_value(value)}" for name, value in metrics.items()]
        return ", ".join(parts)

    @staticmethod
    def _show(bar: Tqdm, step: int) -> None:
        if not bar.disable:
            bar.n = step
            bar.refresh()


def _not_a_terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return not (callable(isatty) and isatty())


def _silent() -> Tqdm:
    return Tqdm(disable=True)


def _value(value: Any) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)
