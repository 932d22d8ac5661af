"""Checkpoints that exist: every N optimizer steps, and ``last.ckpt`` at the end of every fit, in a fixed folder."""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

__all__ = ["PreferenceCheckpoint"]


class PreferenceCheckpoint(ModelCheckpoint):
    """A :class:`~lightning.pytorch.callbacks.ModelCheckpoint` whose checkpoints do not depend on validation.

    Differences from Lightning's defaults, so that a run always leaves something to resume from:

    * ``dirpath`` defaults to ``<trainer.default_root_dir>/checkpoints``, the same for every run of a config (not a
      per-version logger folder), so ``--ckpt_path last`` finds the previous run's ``last.ckpt``;
    * a later run of the same config overwrites ``last.ckpt`` (and a step checkpoint of the same step) instead of
      writing ``last-v1.ckpt``;
    * ``save_last=True`` and ``last.ckpt`` is also written when training ends at a step not saved yet (a run of
      ``max_steps: 20`` with ``every_n_train_steps: 100`` still leaves ``last.ckpt`` at step 20);
    * ``every_n_train_steps`` (optimizer steps) saves ``step=N.ckpt`` whether or not validation ran; without a
      monitored metric every such checkpoint is kept (``save_top_k=-1``; ``1`` keeps only the newest).

    Args:
        dirpath: folder of the checkpoints (``None``: ``<trainer.default_root_dir>/checkpoints``).
        every_n_train_steps: optimizer steps between checkpoints (``None``: only ``last.ckpt`` at the end, and at
            validation ends when ``monitor`` is set).
        save_top_k: how many step checkpoints to keep (``-1``: all).
        save_last: ``True``, ``"link"`` (``last.ckpt`` as a link to the newest step checkpoint) or ``False``.
        filename: name pattern of the step checkpoints.
        auto_insert_metric_name: as in ``ModelCheckpoint`` (off: the pattern gives ``step=N.ckpt``).
        enable_version_counter: as in ``ModelCheckpoint``; off, so that a resumed run overwrites ``last.ckpt``
            instead of writing ``last-v1.ckpt``.
        **kwargs: any other :class:`~lightning.pytorch.callbacks.ModelCheckpoint` argument.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        every_n_train_steps: int | None = None,
        save_top_k: int = -1,
        save_last: bool | str = True,
        filename: str | None = "step={step}",
        auto_insert_metric_name: bool = False,
        enable_version_counter: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            every_n_train_steps=every_n_train_steps,
            save_top_k=save_top_k,
            save_last=save_last,  # type: ignore[arg-type]
            auto_insert_metric_name=auto_insert_metric_name,
            enable_version_counter=enable_version_counter,
            **kwargs,
        )

    def _default_dirpath(self, trainer: pl.Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._default_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    @override
    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        self._default_dirpath(trainer)  # `ckpt_path="last"` is resolved before `setup`
        return super()._find_last_checkpoints(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            return
        super().on_train_end(trainer, pl_module)
