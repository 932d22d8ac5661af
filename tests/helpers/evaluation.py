"""A policy that differs from its reference and 33 synthetic validation pairs: the setting of the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.data.synthetic import SyntheticConfig
from betadpo_lightning.training.module import PreferenceModule

CONFIG = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
CONFIG |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
PAIRS = 33  # odd: two ranks need one padded sample


class Perturb(pl.Callback):
    """Moves the policy away from its (already built) reference with a seeded perturbation, the same on every rank,
    at the start of a validation or a test, so that the margins are not all zero."""

    def _perturb(self, pl_module: pl.LightningModule) -> None:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for param in pl_module.policy.parameters():
                param.add_(0.5 * torch.randn(param.shape, generator=generator))

    def on_validation_start(self, trainer, pl_module) -> None:
        self._perturb(pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._perturb(pl_module)


def module_and_data(root: Path, eval_batch_size: int) -> tuple[PreferenceModule, PreferenceDataModule]:
    """A randomly initialised (seed 0) policy with β 0.1, and the data: 8 training and 33 validation pairs."""
    pl.seed_everything(0)
    module = PreferenceModule(model_config=CONFIG, beta=0.1)
    data = PreferenceDataModule(
        synthetic=SyntheticConfig(train_size=8, validation_size=PAIRS, seed=5),
        cache_dir=str(root / "data"),
        batch_size=4,
        eval_batch_size=eval_batch_size,
        max_length=32,
    )
    return module, data
