"""Fit the tiny module on two CPU ranks with a given strategy and write what rank 0 saw to a JSON file.

Run as a script (Lightning's launcher re-runs it for rank 1): ``python fit_two_ranks.py {ddp,fsdp2}[_packed] OUT.json``
(``_packed``: the batches are packed, prefix-shared segments).
"""

from __future__ import annotations

import functools
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.core.controllers import BetaDPOController
from betadpo_lightning.data.packing import pack_preference_pairs
from betadpo_lightning.training.module import PreferenceModule
from helpers.ddp_checks import CrossRankCheck
from helpers.recorder import Recorder
from helpers.tiny import TINY_LLAMA, RandomPairsData, collate_pairs


def main(kind: str, out: str) -> None:
    pl.seed_everything(0)
    kind, packed = kind.removesuffix("_packed"), kind.endswith("_packed")
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1) if kind == "fsdp2" else DDPStrategy()
    collate = functools.partial(pack_preference_pairs, pad_token_id=0) if packed else collate_pairs
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    recorder = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=3,
        callbacks=[DynamicBetaCallback(BetaDPOController(beta=0.1, alpha=0.6, rho=0.25)), CrossRankCheck(), recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=RandomPairsData(size=16, batch_size=3, collate=collate))
    reference = list(module.reference_model.parameters())
    sharded = all(type(p).__name__ == "DTensor" for p in reference)
    local = sum(p.to_local().numel() if sharded else p.numel() for p in reference)
    full = [p.full_tensor() if type(p).__name__ == "DTensor" else p for p in module.policy.parameters()]  # every rank
    weights = torch.cat([p.detach().flatten() for p in full]).tolist()
    if trainer.global_rank == 0:
        result = {
            "reference_sharded": sharded,
            "reference_local_fraction": local / sum(p.numel() for p in reference),
            "losses": recorder.losses,
            "betas": recorder.betas,
            "weights": weights,
            "checked": trainer.callback_metrics["checked_steps"].item(),
        }
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
