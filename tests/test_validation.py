"""Validation is exact: independent of how it is batched and of the number of ranks, every pair counted once."""

from __future__ import annotations

import sys

import pytest

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.core.controllers import BetaDPOController
from betadpo_lightning.data.dataloaders import EvalSampler, MarkPadding
from helpers.evaluation import PAIRS, Perturb, module_and_data
from helpers.trainers import quiet_trainer

KEYS = ("val/loss", "val/rewards/accuracies", "val/rewards/margins", "val/margins/mean", "val/margins/std")


def _validate(tmp_path, eval_batch_size: int, **trainer_kwargs) -> dict[str, float]:
    """One validation pass of a randomly initialised (seed 0) policy whose reference differs from it (the policy is
    perturbed after the reference copy is taken, so that the margins are not all zero)."""
    module, data = module_and_data(tmp_path, eval_batch_size)
    trainer = quiet_trainer(
        tmp_path / f"run{eval_batch_size}", 1, [DynamicBetaCallback(BetaDPOController(beta=0.1)), Perturb()],
        **trainer_kwargs,
    )  # fmt: skip
    (results,) = trainer.validate(module, datamodule=data)
    return {key: float(results[key]) for key in (*KEYS, "val/nonfinite_pairs")}


def test_eval_sampler_pads_with_flagged_repeats():
    """33 samples on 2 ranks: rank 0 gets 0, 2, ..., 32; rank 1 gets 1, 3, ..., 31 and sample 0 again, flagged."""
    data = list(range(PAIRS))
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
    correct = values[0]["val/rewards/accuracies"] * PAIRS
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
