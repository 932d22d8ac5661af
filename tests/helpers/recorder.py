"""A callback that records what each training step did, for comparing runs."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import torch


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.betas: list[float] = []
        self.keeps: list[list[bool]] = []
        self.controller_states: list[dict] = []
        self.pair_indices: list[list[int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        if "train/beta" in trainer.callback_metrics:
            self.betas.append(float(trainer.callback_metrics["train/beta"]))
        provider = getattr(pl_module, "beta_provider", None)
        if provider is not None:
            self.controller_states.append(copy.deepcopy(provider.controller.state_dict()))
        if "pair_index" in batch:
            self.pair_indices.append(batch["pair_index"].tolist())


def params_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
