"""Shared steps of the export tests: a short fit, log-probs of a batch, and comparisons with the trained policy."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

from betadpo_lightning.core.logps import sequence_logps
from betadpo_lightning.training.module import PreferenceModule
from helpers.tiny import RandomPairs, resumable_loader
from helpers.trainers import quiet_trainer


def adamw(params):
    return torch.optim.AdamW(params, lr=1e-2)


def fit_random_pairs(tmp_path: Path, module: PreferenceModule, steps: int = 2, vocab: int = 48) -> Path:
    trainer = quiet_trainer(tmp_path, steps)
    trainer.fit(module, resumable_loader(RandomPairs(12, vocab=vocab), 4))
    trainer.save_checkpoint(tmp_path / "trained.ckpt")
    return tmp_path / "trained.ckpt"


def assert_mentions(text: str, *parts: str) -> None:
    missing = [part for part in parts if part not in text]
    assert not missing, f"{missing} not in {text!r}"


@contextlib.contextmanager
def peft_loading():
    """peft still calls an attribute transformers 5 renamed, with a FutureWarning (an error in this suite)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logps(logits, batch["labels"])


def assert_same_logps(exported: torch.nn.Module, trained: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    torch.testing.assert_close(logps(exported, batch), logps(trained.eval(), batch), rtol=0, atol=1e-5)


def assert_same_weights(exported: torch.nn.Module, trained: torch.nn.Module) -> None:
    expected = dict(trained.named_parameters())
    got = dict(exported.named_parameters())
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value.detach()), name
