"""What a finished fit printed last: the final metrics, where logs and checkpoints are, how to export the model."""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from typing_extensions import override

__all__ = ["DEFAULT_METRICS", "RunSummary"]

DEFAULT_METRICS: tuple[str, ...] = ("val/loss", "val/rewards/accuracies", "val/rewards/margins", "train/beta")
"""The metrics of the summary: the last validation's, and β-DPO's last batch β (metrics not logged are left out)."""


class RunSummary(Callback):
    """At the end of ``fit``, print (global rank 0 only) a short summary of the run to standard output.

    The final values of ``metrics`` (the last validation's for ``val/`` metrics, the last logged value otherwise),
    the log folder of each logger, the last checkpoint, and the commands that export the model and plot the logs::

        Run finished at step 300 (last validation at step 300).
          val/loss                 0.4821
          val/rewards/accuracies   0.8047
          ...
        logs        runs/quickstart/logs/version_0
        checkpoint  runs/quickstart/checkpoints/last.ckpt
        export      python -m betadpo_lightning.commands.export --ckpt_path ... --output_dir runs/quickstart/export
        plots       python -m betadpo_lightning.commands.plot runs/quickstart/logs/version_0

    The CLI adds it to every run; elsewhere pass it to ``Trainer(callbacks=[RunSummary()])``.

    Args:
        metrics: the metrics to show, in this order.
    """

    def __init__(self, metrics: Sequence[str] = DEFAULT_METRICS) -> None:
        self.metrics = tuple(metrics)
        self._validated_at: int | None = None

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_at = trainer.global_step

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            print(self.render(trainer), flush=True)

    def render(self, trainer: pl.Trainer) -> str:
        """The summary of ``trainer``'s run, as printed."""
        validated = f" (last validation at step {self._validated_at})" if self._validated_at is not None else ""
        lines = [f"Run finished at step {trainer.global_step}{validated}."]
        values = {name: _number(trainer.callback_metrics.get(name)) for name in self.metrics}
        shown = {name: value for name, value in values.items() if value is not None}
        width = max((len(name) for name in shown), default=0)
        lines += [f"  {name:<{width}}  {value:.4g}" for name, value in shown.items()]
        paths = self._paths(trainer)
        label = max((len(name) for name, _ in paths), default=0)
        lines += [f"{name:<{label}}  {text}" for name, text in paths]
        return "\n".join(lines)

    @staticmethod
    def _paths(trainer: pl.Trainer) -> list[tuple[str, str]]:
        paths = [("logs", str(logger.log_dir)) for logger in trainer.loggers if getattr(logger, "log_dir", None)]
        last = _last_checkpoint(trainer)
        if last is None:
            paths.append(("checkpoint", "none written (add betadpo_lightning.callbacks.PreferenceCheckpoint)"))
        else:
            export = Path(trainer.default_root_dir) / "export"
            command = [
                "python",
                "-m",
                "betadpo_lightning.commands.export",
                "--ckpt_path",
                last,
                "--output_dir",
                str(export),
            ]
            paths += [("checkpoint", last), ("export", shlex.join(command))]
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                command = ["python", "-m", "betadpo_lightning.commands.plot", str(logger.log_dir)]
                paths.append(("plots", shlex.join(command)))
                break
        return paths


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if not math.isnan(number) else None


def _last_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest ``last.ckpt`` that a checkpoint callback wrote in this run (``None`` without one)."""
    for callback in trainer.checkpoint_callbacks:
        path = getattr(callback, "last_model_path", "") if isinstance(callback, ModelCheckpoint) else ""
        if path and Path(path).exists():
            return str(path)
    return None
