"""Two CPU processes with a token budget: varying pairs per rank and step, β-DPO still global and exact."""

from __future__ import annotations

import functools
import json
import sys

import lightning.pytorch as pl
import pytest
import torch

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.core.controllers import BetaDPOController
from betadpo_lightning.data import PreferenceDataModule, SyntheticConfig
from betadpo_lightning.training.module import PreferenceModule
from helpers.trainers import quiet_trainer

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups in spawned processes"),
]

CONFIG = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
CONFIG |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
CONTROLLER = {"beta": 0.2, "alpha": 0.5, "rho": 0.25, "momentum": 0.8, "seed": 3}
BUDGET = 200


class StepLog(pl.Callback):
    """Records, on each rank, every training step's local margins, decision and pairs into ``rank<r>.json``."""

    def __init__(self, folder) -> None:
        self.folder = folder
        self.records: list[dict] = []

    def on_train_start(self, trainer, pl_module) -> None:
        provider = pl_module.beta_provider
        decide = provider.decide

        def recording(pairs, margins, training):
            decision = decide(pairs, margins, training)
            if training:
                record = {"margins": margins.double().tolist(), "beta": float(decision.beta)}
                record |= {"keep": decision.keep.tolist(), "normalizer": float(decision.normalizer)}
                self.records.append(record)
            return decision

        provider.decide = recording

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.records[-1]["pairs"] = batch["pair_index"].tolist()
        self.records[-1]["tokens"] = int((batch["segment_ids"] >= 0).sum())

    def on_train_end(self, trainer, pl_module) -> None:
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.records))


def _data(tmp_path) -> PreferenceDataModule:
    """40 synthetic pairs, packed, in micro-batches of at most ``BUDGET`` tokens."""
    synthetic = SyntheticConfig(train_size=40, validation_size=0, seed=4)
    return PreferenceDataModule(
        synthetic=synthetic, cache_dir=str(tmp_path / "data"), max_length=48, packing=True, max_tokens=BUDGET, seed=1
    )


def test_token_budget_on_two_ranks_keeps_beta_dpo_global_and_exact(tmp_path):
    pl.seed_everything(0)
    data = _data(tmp_path)
    module = PreferenceModule(model_config=CONFIG, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    callbacks = [DynamicBetaCallback(BetaDPOController(**CONTROLLER)), StepLog(tmp_path)]
    trainer = quiet_trainer(tmp_path, 8, callbacks, devices=2, strategy="ddp_spawn", limit_val_batches=0)
    trainer.fit(module, datamodule=data)

    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 8  # the same number of micro-batches on both ranks
    counts = [(len(a["pairs"]), len(b["pairs"])) for a, b in zip(*ranks, strict=True)]
    assert any(a != b for a, b in counts)
    assert len(set(counts)) > 1
    controller = BetaDPOController(**CONTROLLER)  # one process stepped on the concatenated margins
    seen: list[int] = []
    for a, b in zip(*ranks, strict=True):
        assert a["tokens"] <= BUDGET
        assert b["tokens"] <= BUDGET
        assert not set(a["pairs"]) & set(b["pairs"])
        seen += a["pairs"] + b["pairs"]
        result = controller.step(torch.tensor(a["margins"] + b["margins"], dtype=torch.float64))
        keep = result.keep.tolist()
        assert a["beta"] == b["beta"] == float(result.beta)
        assert a["keep"] + b["keep"] == keep
        assert a["normalizer"] == b["normalizer"] == sum(keep) / 2  # after DDP's mean: 1 / (global kept) per pair
    counted = [len(a["pairs"]) + len(b["pairs"]) for a, b in zip(*ranks, strict=True)]
    per_epoch = next(step + 1 for step in range(len(counted)) if sum(counted[: step + 1]) >= 40)
    assert sorted(seen[: sum(counted[:per_epoch])]) == list(range(40))  # every pair exactly once over both ranks


def test_static_beta_weighs_every_pair_of_every_rank_alike(tmp_path):
    """Without the callback, the default StaticBeta's training normaliser is the global pair count over the ranks:
    rank r's loss is sum(its losses) / ((n_0 + n_1) / 2), so after DDP's gradient mean each pair weighs
    1 / (n_0 + n_1) whichever rank holds it (the local mean n_r would weigh the smaller rank's pairs more)."""
    pl.seed_everything(0)
    data = _data(tmp_path)
    module = PreferenceModule(model_config=CONFIG, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    trainer = quiet_trainer(tmp_path, 6, [StepLog(tmp_path)], devices=2, strategy="ddp_spawn", limit_val_batches=0)
    trainer.fit(module, datamodule=data)

    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert any(len(a["pairs"]) != len(b["pairs"]) for a, b in zip(*ranks, strict=True))
    for a, b in zip(*ranks, strict=True):
        assert a["normalizer"] == b["normalizer"] == (len(a["pairs"]) + len(b["pairs"])) / 2
