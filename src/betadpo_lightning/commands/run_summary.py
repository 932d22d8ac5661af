"""What a fit prints: the model in one line at its start; at its end the metrics, files and follow-up commands.

The commands (export, sample, plot) work as printed for the kind of run (see :class:`RunSummary`).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from typing_extensions import override

__all__ = ["DEFAULT_METRICS", "RunSummary", "model_line"]

DEFAULT_METRICS: tuple[str, ...] = ("val/loss", "val/rewards/accuracies", "val/rewards/margins", "train/beta")
"""The metrics of the summary: the last validation's, and β-DPO's last batch β (metrics not logged are left out)."""

SAMPLE_PROMPT = "..."
"""The prompt of the printed sample command (replace it with yours)."""


class RunSummary(Callback):
    """At the start and end of ``fit``, print (global rank 0 only) a short account of the run to standard output.

    At the start, the model in one line (``PreferenceModule: 82.2 K trainable parameters, 82.2 K frozen``).
    At the end, the final values of ``metrics`` (the last validation's for ``val/`` metrics, the last logged value
    otherwise), the log folder of each logger, the last checkpoint, and the commands that export the model, sample
    from the export and plot the logs::

        Run finished at step 300 (last validation at step 300).
          val/loss                 0.4821
          val/rewards/accuracies   0.8047
          ...
        logs        runs/quickstart/logs/version_0
        checkpoint  runs/quickstart/checkpoints/last.ckpt
        export      python -m betadpo_lightning.commands.export --ckpt_path ... --output_dir runs/quickstart/export
        sample      python -m betadpo_lightning.commands.sample --model runs/quickstart/export --chat_template false ...
        plots       python -m betadpo_lightning.commands.plot runs/quickstart

    The commands fit the run: ``--merge_lora`` for LoRA adapters on a ``model_config`` policy (an adapter folder
    cannot name a base that exists nowhere), ``--overwrite`` when the export folder holds an earlier export, and
    ``--chat_template true`` or ``false`` as the run's data were rendered (with or without the chat template), so that
    a prompt is encoded as in training. A supervised warm start (``SFTModule`` with ``output_dir``) prints its model
    folder and the sample command for it. The plot command takes the run folder, which joins a resumed run's logs.

    The CLI adds it to every run; elsewhere pass it to ``Trainer(callbacks=[RunSummary()])``.

    Args:
        metrics: the metrics to show, in this order.
    """

    def __init__(self, metrics: Sequence[str] = DEFAULT_METRICS) -> None:
        self.metrics = tuple(metrics)
        self._validated_at: int | None = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            print(model_line(pl_module), flush=True)

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
        paths = _paths(trainer)
        label = max((len(name) for name, _ in paths), default=0)
        lines += [f"{name:<{label}}  {text}" for name, text in paths]
        return "\n".join(lines)


def model_line(module: pl.LightningModule) -> str:
    """The module in one line: its class, trainable and frozen parameter counts.

    Example:
        >>> import torch
        >>> module = pl.LightningModule()
        >>> module.layer, module.frozen = torch.nn.Linear(10, 10), torch.nn.Linear(10, 2).requires_grad_(False)
        >>> model_line(module)
        'LightningModule: 110 trainable parameters, 22 frozen'
    """
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    counts = f"{get_human_readable_count(trainable).strip()} trainable parameters"
    if frozen:
        counts += f", {get_human_readable_count(frozen).strip()} frozen"
    return f"{type(module).__name__}: {counts}"


def _paths(trainer: pl.Trainer) -> list[tuple[str, str]]:
    paths = [("logs", str(logger.log_dir)) for logger in trainer.loggers if getattr(logger, "log_dir", None)]
    module = trainer.lightning_module
    hparams: Mapping[str, Any] = getattr(module, "hparams", {})
    last = _last_checkpoint(trainer)
    model_dir = hparams.get("output_dir") if _is_sft(module) else None
    if model_dir is not None:
        paths.append(("model", str(model_dir)))
        if last is not None:
            paths.append(("checkpoint", last))
    elif last is None:
        paths.append(("checkpoint", "none written (add betadpo_lightning.callbacks.PreferenceCheckpoint)"))
    else:
        model_dir = str(Path(trainer.default_root_dir) / "export")
        paths += [("checkpoint", last), ("export", shlex.join(export_command(last, model_dir, hparams)))]
    if model_dir is not None:
        paths.append(("sample", shlex.join(sample_command(str(model_dir), _chat_template(trainer)))))
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            paths.append(
                ("plots", shlex.join(["python", "-m", "betadpo_lightning.commands.plot", _run_folder(trainer, logger)]))
            )
            break
    return paths


def export_command(checkpoint: str, output_dir: str, hparams: Mapping[str, Any]) -> list[str]:
    """The export command of ``checkpoint``, as the module's options need it.

    ``--merge_lora`` for LoRA adapters on a ``model_config`` policy, ``--overwrite`` when ``output_dir`` holds files
    (an earlier export: the export refuses to delete anything else, naming it).
    """
    command = [
        "python",
        "-m",
        "betadpo_lightning.commands.export",
        "--ckpt_path",
        checkpoint,
        "--output_dir",
        output_dir,
    ]
    if hparams.get("lora") is not None and hparams.get("model_name_or_path") is None:
        command.append("--merge_lora")
    output = Path(output_dir)
    if output.is_dir() and any(output.iterdir()):
        command.append("--overwrite")
    return command


def sample_command(model_dir: str, chat_template: bool | None) -> list[str]:
    """The sample command of an exported model: with the chat template as in training (``None``: not known)."""
    command = ["python", "-m", "betadpo_lightning.commands.sample", "--model", model_dir]
    if chat_template is not None:
        command += ["--chat_template", "true" if chat_template else "false"]
    return [*command, "--prompt", SAMPLE_PROMPT]


def _chat_template(trainer: pl.Trainer) -> bool | None:
    """Whether the run's prompts were rendered with the chat template (its datamodule's record), ``None``: unknown."""
    renderings = getattr(trainer.datamodule, "renderings", None) or {}
    rendering = renderings.get("validation") or renderings.get("train")
    return None if rendering is None else bool(rendering.use_template)


def _is_sft(module: Any) -> bool:
    from betadpo_lightning.training.sft import SFTModule

    return isinstance(module, SFTModule)


def _run_folder(trainer: pl.Trainer, logger: CSVLogger) -> str:
    """The folder the plot command takes: the run folder when the CSV logs are its ``logs/``, else the logs' root."""
    root = Path(trainer.default_root_dir)
    return str(root) if Path(logger.root_dir) == root / "logs" else str(logger.root_dir)


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
