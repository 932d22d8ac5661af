"""Preference metrics accumulated over batches equal the statistics of the concatenated data."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from betadpo_lightning.core.losses import pair_margins
from betadpo_lightning.core.types import PairData
from betadpo_lightning.training.metrics import MomentMetric, PreferenceMetrics, RewardAccuracy


def _batches(seed: int, sizes=(3, 7, 1, 5)):
    g = torch.Generator().manual_seed(seed)
    return [[-torch.rand(n, generator=g) * 20 for _ in range(4)] for n in sizes]


def test_accumulation_equals_the_concatenation():
    batches, beta = _batches(0), 0.25
    metrics = PreferenceMetrics()
    for batch in batches:
        metrics.update(PairData(*batch), pair_margins(PairData(*batch)), beta=beta)
    pc, pr, rc, rr = (torch.cat([b[i] for b in batches]).double().tolist() for i in range(4))
    chosen = [beta * (a - b) for a, b in zip(pc, rc, strict=True)]
    rejected = [beta * (a - b) for a, b in zip(pr, rr, strict=True)]
    margins = [(a - b) - (c - d) for a, b, c, d in zip(pc, rc, pr, rr, strict=True)]
    n = len(pc)
    mean_margin = sum(margins) / n
    expected = {
        "rewards/chosen": sum(chosen) / n,
        "rewards/rejected": sum(rejected) / n,
        "rewards/margins": (sum(chosen) - sum(rejected)) / n,
        "rewards/accuracies": sum(c > r for c, r in zip(chosen, rejected, strict=True)) / n,
        "logps/chosen": sum(pc) / n,
        "logps/rejected": sum(pr) / n,
        "margins/mean": mean_margin,
        "margins/std": math.sqrt(sum((m - mean_margin) ** 2 for m in margins) / (n - 1)),
    }
    got = metrics.compute()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert metrics.num_batches == 4


def test_reset_starts_a_new_window():
    metrics = PreferenceMetrics()
    for batch in _batches(1):
        metrics.update(PairData(*batch), pair_margins(PairData(*batch)), beta=0.1)
    metrics.reset()
    assert metrics.num_batches == 0
    batch = _batches(2, sizes=(4,))[0]
    metrics.update(PairData(*batch), pair_margins(PairData(*batch)), beta=0.1)
    assert metrics.compute()["logps/chosen"].item() == pytest.approx(batch[0].mean().item(), rel=1e-6)


def test_ties_are_not_accurate_and_empty_is_nan():
    accuracy = RewardAccuracy()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(accuracy.compute().item())
    accuracy.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))
    assert accuracy.compute().item() == 0.5


def test_moments_of_one_value():
    moments = MomentMetric()
    moments.update(torch.tensor([4.0]))
    mean, std = moments.compute()
    assert (mean.item(), std.item()) == (4.0, 0.0)


def test_pickles():
    metrics = PreferenceMetrics()
    metrics.update(PairData(*_batches(3, sizes=(2,))[0]), pair_margins(PairData(*_batches(3, sizes=(2,))[0])), beta=0.1)
    clone = pickle.loads(pickle.dumps(metrics))
    assert clone.compute()["rewards/chosen"].item() == metrics.compute()["rewards/chosen"].item()
