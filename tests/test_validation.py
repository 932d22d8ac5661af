"""Validation is exact: independent of how it is batched and of the number of ranks, every pair counted once."""

from __future__ import annotations

import sys

import lightning.pytorch as pl
import pytest
import torch

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.controllers import BetaDPOController
from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.data.loader import EvalSampler, MarkPadding
from betadpo_lightning.data.synthetic import SyntheticConfig
from betadpo_lightning.module import PreferenceModule
from helpers.trainers import quiet_trainer

CONFIG = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
CONFIG |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
VALIDATION_PAIRS = 33  # odd: two ranks need one padded sample
KEYS = ("val/loss", "val/rewards/accuracies", "val/rewards/margins", "val/margins/mean", "val/margins/std")


def _validate(tmp_path, eval_batch_size: int, **trainer_kwargs) -> dict[str, float]:
    """One validation pass of a randomly initialised (seed 0) policy whose reference differs from it (the policy is
    perturbed after the reference copy is taken, so that the margins are not all zero)."""
    pl.seed_everything(0)
    module = PreferenceModule(model_config=CONFIG, beta=0.1)
    data = PreferenceDataModule(
        synthetic=SyntheticConfig(train_size=8, validation_size=VALIDATION_PAIRS, seed=5),
        cache_dir=str(tmp_path / "data"),
        batch_size=4,
        eval_batch_size=eval_batch_size,
        max_length=32,
    )
    trainer = quiet_trainer(
        tmp_path / f"run{eval_batch_size}", 1, [DynamicBetaCallback(BetaDPOController(beta=0.1)), _Perturb()],
        **trainer_kwargs,
    )  # fmt: skip
    (results,) = trainer.validate(module, datamodule=data)
    return {key: float(results[key]) for key in (*KEYS, "val/nonfinite_pairs")}


class _Perturb(pl.Callback):
    """Moves the policy away from its (already built) reference with a seeded perturbation, the same on every rank."""

    def on_validation_start(self, trainer, pl_module) -> None:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for param in pl_module.policy.parameters():
                param.add_(0.5 * torch.randn(param.shape, generator=generator))


def test_eval_sampler_pads_with_flagged_repeats():
    """33 samples on 2 ranks: rank 0 gets 0, 2, ..., 32; rank 1 gets 1, 3, ..., 31 and sample 0 again, flagged."""
    data = list(range(VALIDATION_PAIRS))
    shares = [list(EvalSampler(data, num_replicas=2, rank=rank)) for rank in (0, 1)]
    assert shares[0] == list(range(0, 33, 2))
    assert shares[1] == [*range(1, 33, 2), -1]
    served = MarkPadding([{"index": i} for i in data])
    assert served[-1] == {"index": 0, "padding": True}
    assert served[5] == {"index": 5, "padding": False}
    real = sorted(i for share in shares for i in share if i >= 0)
    assert real == data  # every sample exactly once among the unflagged ones


def test_validation_does_not_depend_on_the_batch_size(tmp_path):
    """Validation uses the fixed β0 and a mean over pairs, so batch sizes 4, 16 and 64 (one batch) agree."""
    values = [_validate(tmp_path, size) for size in (4, 16, 64)]
    assert values[0]["val/nonfinite_pairs"] == 0.0
    assert 0.0 < values[0]["val/rewards/accuracies"] < 1.0  # not a degenerate case
    assert values[0]["val/margins/std"] > 0.0
    for other in values[1:]:
        for key in KEYS:
            assert other[key] == pytest.approx(values[0][key], rel=1e-5, abs=1e-6), key
    # The accuracy is a count over the 33 pairs.
    correct = values[0]["val/rewards/accuracies"] * VALIDATION_PAIRS
    assert correct == pytest.approx(round(correct), abs=1e-4)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups in spawned processes")
@pytest.mark.parametrize("eval_batch_size", [16, 5])
def test_two_ranks_give_the_single_process_values(tmp_path, eval_batch_size):
    """33 pairs on 2 ranks (17 and 16 + 1 flagged padding; at batch size 16 rank 1's last batch is padding only, at
    5 the ranks run 4 batches each) give the values of one process: no pair counted twice, no collective per batch."""
    single = _validate(tmp_path / "one", eval_batch_size)
    double = _validate(tmp_path / "two", eval_batch_size, devices=2, strategy="ddp_spawn")
    for key in KEYS:
        assert double[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
    assert double["val/nonfinite_pairs"] == 0.0
