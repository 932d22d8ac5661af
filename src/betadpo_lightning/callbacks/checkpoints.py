"""Checkpoints that exist: every N optimizer steps, and ``last.ckpt`` at the end of every fit, in a fixed folder.

Also when the fit is stopped by Ctrl-C or ``SIGTERM`` (:mod:`~betadpo_lightning.callbacks.stop_signals`), written
atomically and checked when read (:mod:`~betadpo_lightning.callbacks.checkpoint_io`).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from typing_extensions import override

from betadpo_lightning.callbacks.checkpoint_io import use_checked_io
from betadpo_lightning.callbacks.stop_signals import StopSignalConnector, install_stop_signals

__all__ = ["PreferenceCheckpoint"]


class PreferenceCheckpoint(ModelCheckpoint):
    """A :class:`~lightning.pytorch.callbacks.ModelCheckpoint` whose checkpoints do not depend on validation.

    Differences from Lightning's defaults, so that a run always leaves something to resume from:

    * ``dirpath`` defaults to ``<trainer.default_root_dir>/checkpoints``, the same for every run of a config (not a
      per-version logger folder), so ``--ckpt_path last`` finds the previous run's ``last.ckpt``;
    * a later run of the same config overwrites ``last.ckpt`` (and a step checkpoint of the same step) instead of
      writing ``last-v1.ckpt``;
    * ``save_last=True`` and ``last.ckpt`` is also written when training ends at a step not saved yet (a run of
      ``max_steps: 20`` with ``every_n_train_steps: 100`` still leaves ``last.ckpt`` at step 20), at the end of
      that step: resumed with a larger ``max_steps``, the run goes on exactly as one that never stopped;
    * Ctrl-C, ``SIGTERM`` (and SLURM's requeue signal) on any rank stop every rank after the same optimizer step (or
      validation), with ``last.ckpt`` written there, and end the process with status 128 + the signal's number (130,
      143); a second Ctrl-C aborts at once, without a checkpoint (see
      :class:`~betadpo_lightning.callbacks.stop_signals.StopSignalConnector`);
    * checkpoint files are written atomically (a kill or a full disk leaves the previous file whole) and refused
      when damaged on reading, naming the file: the Trainer's strategy gets a
      :class:`~betadpo_lightning.callbacks.checkpoint_io.PreferenceCheckpointIO` unless it has a ``CheckpointIO`` of
      its own;
    * ``every_n_train_steps`` (optimizer steps) saves ``step=N.ckpt`` whether or not validation ran; without a
      monitored metric every such checkpoint is kept (``save_top_k=-1``; ``1`` keeps only the newest), or the
      newest ``keep_last`` of them: an older one is deleted once the new one is written, never ``last.ckpt`` and,
      with a ``monitor``, never the best checkpoint (nor one of the ``save_top_k`` best);
    * with a ``monitor``, a NaN score (an evaluation with no finite pair) never makes a top-k checkpoint, so
      ``best_model_path`` is never one (Lightning alone keeps it, scored ±inf, while fewer than ``save_top_k`` exist).

    Args:
        dirpath: folder of the checkpoints (``None``: ``<trainer.default_root_dir>/checkpoints``).
        every_n_train_steps: optimizer steps between checkpoints (``None``: only ``last.ckpt`` at the end, and at
            validation ends when ``monitor`` is set).
        save_top_k: how many step checkpoints to keep (``-1``: all).
        keep_last: keep only the newest ``keep_last`` step checkpoints (``None``: as ``save_top_k`` says); the
            checkpoints that ``last.ckpt`` and the monitored best are kept besides. In YAML: ``init_args:
            {every_n_train_steps: 100, keep_last: 3}``.
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
        keep_last: int | None = None,
        save_last: bool | str = True,
        filename: str | None = "step={step}",
        auto_insert_metric_name: bool = False,
        enable_version_counter: bool = False,
        **kwargs: Any,
    ) -> None:
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last must be a whole number of at least 1 (or null: keep all), got {keep_last!r}")
        self.keep_last = keep_last
        self._step_checkpoints: list[str] = []  # the step checkpoints written, oldest first (kept in checkpoints)
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
        use_checked_io(trainer.strategy)
        install_stop_signals(trainer)
        super().setup(trainer, pl_module, stage)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        last_step = 0 < trainer.max_steps <= trainer.global_step
        if self.save_last and last_step and not self._should_skip_saving_checkpoint(trainer):
            # Now, while Lightning still counts the epoch as running: at `on_train_end` it is marked finished and a
            # run resumed with a larger max_steps would start the next epoch instead of finishing this one.
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        accumulating = getattr(trainer.fit_loop.epoch_loop, "_should_accumulate", lambda: False)
        if not accumulating():  # an optimizer step just ended (the same batches on every rank)
            self._stop_on_signal(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._stop_on_signal(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if isinstance(exception, SIGTERMException) and not exception.code:  # Lightning's own, outside `fit`
            exception.code = 128 + signal.SIGTERM

    def _stop_on_signal(self, trainer: pl.Trainer) -> None:
        """If a stop signal reached any rank, write ``last.ckpt`` here and end the fit (a collective: every rank)."""
        connector = trainer._signal_connector
        if not isinstance(connector, StopSignalConnector):
            return
        signum = connector.agreed_signal(trainer)
        if signum is None:
            return
        if signum == connector.requeue_signal():
            connector.requeue(signum)
        saved_here = self._last_global_step_saved == trainer.global_step and os.path.exists(self.last_model_path)
        if self.save_last and trainer.global_step > 0 and not trainer.fast_dev_run and not saved_here:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if trainer.is_global_zero:
            saved = self.last_model_path if trainer.global_step > 0 and self.last_model_path else None
            where = f"; {saved} written: continue with --ckpt_path last" if saved else "; nothing trained to save"
            name = signal.Signals(signum).name
            print(f"Stopped by {name} after step {trainer.global_step}{where}.", file=sys.stderr, flush=True)
        raise connector.stop(signum)

    @override
    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        self._default_dirpath(trainer)  # `ckpt_path="last"` is resolved before `setup`
        return super()._find_last_checkpoints(trainer)

    @override
    def check_monitor_top_k(self, trainer: pl.Trainer, current: Tensor | None = None) -> bool:
        if current is not None and bool(torch.isnan(current)):  # the same on every rank: the metric is synced
            return False
        return super().check_monitor_top_k(trainer, current)

    @override
    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if self.keep_last is None or filepath == self.last_model_path:
            super()._save_checkpoint(trainer, filepath)
            return
        written = [path for path in self._step_checkpoints if path != filepath] + [filepath]
        protected = self._protected()
        old = [path for path in written[: -self.keep_last] if path not in protected]
        self._step_checkpoints = [path for path in written if path not in old]  # the state the new file holds
        super()._save_checkpoint(trainer, filepath)
        for path in old:  # only now that the new checkpoint is written
            self.best_k_models.pop(path, None)
            self._remove_checkpoint(trainer, path)

    def _protected(self) -> set[str]:
        """Checkpoints that ``keep_last`` never deletes: ``last.ckpt`` and, with a monitor, the best ones."""
        protected = {self.last_model_path}
        if self.monitor is not None:
            protected.add(self.best_model_path)
            if self.save_top_k > 0:
                protected.update(self.best_k_models)
        return protected

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "step_checkpoints": list(self._step_checkpoints)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            self._step_checkpoints = list(state_dict.get("step_checkpoints", []))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            return
        super().on_train_end(trainer, pl_module)
