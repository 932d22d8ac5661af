"""Train the tiny module on two CPU ranks for 2 steps, checkpointing at step 2, and record the policy it ends with.

Run as a script (Lightning's launcher re-runs it for rank 1):
``python export_two_ranks.py OUT.pt SAVE_DIR [--strategy {ddp,fsdp2}]``. Under ``fsdp2`` (``ModelParallelStrategy``)
the checkpoint is a folder of per-rank shards. Rank 0 saves to ``OUT.pt`` the policy's full weights (gathered from
the shards) and the summed log-probs of a fixed batch under the policy, both as they are at the checkpointed step.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy

from betadpo_lightning.core.logps import sequence_logps
from betadpo_lightning.training.module import PreferenceModule
from helpers.tiny import TINY_LLAMA, RandomPairs, RandomPairsData, collate_pairs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("save_dir")
    parser.add_argument("--strategy", choices=("ddp", "fsdp2"), default="fsdp2")
    args = parser.parse_args()
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    strategy = (
        ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1) if args.strategy == "fsdp2" else "ddp"
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=2,
        callbacks=[ModelCheckpoint(dirpath=args.save_dir, every_n_train_steps=2, save_top_k=-1)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=RandomPairsData(size=20, batch_size=3))
    policy = module.policy.eval()
    # every rank takes part: gathering a shard and the sharded forward are collectives
    params = {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for name, p in policy.named_parameters()
    }
    batch = collate_pairs([RandomPairs(8, seed=3)[i] for i in range(8)])
    with torch.no_grad():
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if trainer.global_rank == 0:
        logps = sequence_logps(logits.full_tensor() if hasattr(logits, "full_tensor") else logits, batch["labels"])
        torch.save({"params": params, "logps": logps, "global_step": trainer.global_step}, args.out)


if __name__ == "__main__":
    main()
