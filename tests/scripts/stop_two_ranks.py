"""β-DPO on two CPU ranks (DDP, gloo) that trains until a signal stops it; each rank writes how it ended to JSON.

Run as a script, by Lightning's launcher (``python stop_two_ranks.py OUT_DIR``, which re-runs it for rank 1) or by
``torchrun --nproc-per-node 2 stop_two_ranks.py OUT_DIR``. Once a rank passes step 2 it writes
``OUT_DIR/ready.<rank>`` with its process id, for the test to send it a signal; the run would go on for 10 000 steps.
Every rank then writes ``OUT_DIR/rank<rank>.json``: the exit code of the ``SystemExit`` that ended the fit and the
step it stopped after. Checkpoints go to ``OUT_DIR/checkpoints``.
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

from betadpo_lightning.callbacks import DynamicBetaCallback, PreferenceCheckpoint
from betadpo_lightning.core.controllers import BetaDPOController
from betadpo_lightning.training.module import PreferenceModule
from helpers.signals import SignalAt
from helpers.tiny import TINY_LLAMA, RandomPairsData


def main(out: str) -> None:
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=10_000,
        callbacks=[
            DynamicBetaCallback(BetaDPOController(rho=0.25)),
            PreferenceCheckpoint(dirpath=os.path.join(out, "checkpoints")),
            SignalAt(step=2, marker=os.path.join(out, "ready")),
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    code = 0
    try:
        trainer.fit(module, datamodule=RandomPairsData(size=24, batch_size=3))
    except SystemExit as stop:
        code = stop.code
        raise
    finally:
        with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as file:
            json.dump({"code": code, "step": trainer.global_step}, file)


if __name__ == "__main__":
    main(sys.argv[1])
