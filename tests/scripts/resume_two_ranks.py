"""β-DPO on two CPU ranks (DDP, gloo) with optional checkpointing and resume; rank 0 writes what it saw to JSON.

Run as a script (Lightning's launcher re-runs it for rank 1):
``python resume_two_ranks.py OUT.json MAX_STEPS [--strategy {ddp,fsdp2}] [--save-dir DIR] [--resume CKPT]``.
Under ``fsdp2`` (``ModelParallelStrategy``) checkpoints are sharded (a folder per checkpoint).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.core.controllers import BetaDPOController
from betadpo_lightning.training.module import PreferenceModule
from helpers.ddp_checks import CrossRankCheck
from helpers.recorder import Recorder
from helpers.tiny import TINY_LLAMA, RandomPairsData


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("max_steps", type=int)
    parser.add_argument("--save-dir")
    parser.add_argument("--resume")
    parser.add_argument("--strategy", choices=("ddp", "fsdp2"), default="ddp")
    args = parser.parse_args()
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    recorder, check = Recorder(), CrossRankCheck()
    callbacks = [DynamicBetaCallback(BetaDPOController(rho=0.25, seed=4)), check, recorder]
    if args.save_dir:
        callbacks.append(ModelCheckpoint(dirpath=args.save_dir, every_n_train_steps=2, save_top_k=-1))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        if args.strategy == "fsdp2"
        else "ddp",
        max_steps=args.max_steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=bool(args.save_dir),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    # 20 pairs, 10 per rank, batches of 3: epochs of 4 batches, so step 2 is mid-epoch.
    trainer.fit(module, datamodule=RandomPairsData(size=20, batch_size=3), ckpt_path=args.resume)
    params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in module.policy.parameters()]
    if trainer.global_rank == 0:
        result = {
            "losses": recorder.losses,
            "betas": [float(beta) for beta in check.betas],
            "pairs": recorder.pair_indices,
            "params": [float(p.double().sum()) for p in params],
            "controller_steps": recorder.controller_states[-1]["steps"],
        }
        with open(args.out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
