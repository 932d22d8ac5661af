"""A callback that records what each training step did, for comparing runs."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import torch

from betadpo_lightning.callbacks import DynamicBetaCallback


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self._betas: dict[int, float] = {}
        self.keeps: list[list[bool]] = []
        self.controller_states: list[dict] = []
        self.pair_indices: list[list[int]] = []

    @property
    def betas(self) -> list[float]:
        """``train/beta`` as logged at each logging step (the module logs after the callbacks' batch-end hooks)."""
        return [self._betas[step] for step in sorted(self._betas)]

    def _read_beta(self, trainer) -> None:
        if "train/beta" in trainer.callback_metrics and trainer.global_step not in self._betas:
            self._betas[trainer.global_step] = float(trainer.callback_metrics["train/beta"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._read_beta(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._read_beta(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        provider = pl_module.beta_provider
        if isinstance(provider, DynamicBetaCallback):
            self.controller_states.append(copy.deepcopy(provider.controller.state_dict()))
        if "pair_index" in batch:
            self.pair_indices.append(batch["pair_index"].tolist())


def params_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
