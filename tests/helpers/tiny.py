"""Tiny models and hand-made preference batches for tests (module level so that spawned processes can import them)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import Dataset

from betadpo_lightning.data.dataloaders import resumable_train_loader

TINY_LLAMA = {
    "model_type": "llama",
    "vocab_size": 48,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}


class RandomPairs(Dataset):
    """Pairs of random token ids: a prompt and two responses of random lengths (deterministic per index)."""

    def __init__(self, size: int = 32, vocab: int = 48, seed: int = 0) -> None:
        self.size, self.vocab, self.seed = size, vocab, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, list[int] | int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)

        def ids(low: int, high: int) -> list[int]:
            n = int(torch.randint(low, high, (1,), generator=g))
            return torch.randint(3, self.vocab, (n,), generator=g).tolist()

        return {
            "prompt_input_ids": ids(2, 6),
            "chosen_input_ids": ids(1, 6),
            "rejected_input_ids": ids(1, 6),
            "index": index,
        }


def collate_pairs(samples: list[dict], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """A minimal stand-in for the library's collate: (2B, T), chosen rows first, labels -100 on prompt/padding."""
    rows, labels = [], []
    for key in ("chosen_input_ids", "rejected_input_ids"):
        for s in samples:
            rows.append(s["prompt_input_ids"] + s[key])
            labels.append([-100] * len(s["prompt_input_ids"]) + s[key])
    t = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), t), pad_token_id)
    label_t = torch.full((len(rows), t), -100)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, labels, strict=True)):
        input_ids[i, : len(r)] = torch.tensor(r)
        label_t[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(r)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": label_t,
        "pair_index": torch.tensor([s["index"] for s in samples]),
    }


def resumable_loader(dataset: Dataset, batch_size: int, seed: int = 0):
    return resumable_train_loader(dataset, batch_size=batch_size, collate_fn=collate_pairs, seed=seed)


class RandomPairsData(pl.LightningDataModule):
    """Random pairs behind the library's resumable loader, sharded by the Trainer's rank."""

    def __init__(self, size: int = 16, batch_size: int = 4, seed: int = 0, collate=collate_pairs) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.seed, self.collate = RandomPairs(size), batch_size, seed, collate

    def train_dataloader(self):
        trainer = self.trainer
        return resumable_train_loader(
            self.dataset, self.batch_size, self.collate, self.seed, trainer.world_size, trainer.global_rank
        )
