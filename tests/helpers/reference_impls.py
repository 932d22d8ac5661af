"""Naive float64 re-implementations of the library's formulas, written independently of ``src``.

Plain Python floats and the ``math`` module only: no torch ops that the library itself uses.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence


def log_sigmoid(x: float) -> float:
    # log(1 / (1 + e^-x)), split by sign so that neither branch overflows.
    if x >= 0:
        return -math.log1p(math.exp(-x))
    return x - math.log1p(math.exp(x))


def margin(pc: float, pr: float, rc: float, rr: float) -> float:
    return (pc - rc) - (pr - rr)


def sigmoid_loss(h: float, beta: float, eps: float) -> float:
    return -(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)


def robust_loss(h: float, beta: float, eps: float) -> float:
    return (-(1 - eps) * log_sigmoid(beta * h) + eps * log_sigmoid(-beta * h)) / (1 - 2 * eps)


def ipo_loss(h: float, beta: float, eps: float = 0.0) -> float:
    return (h - 1 / (2 * beta)) ** 2


def hinge_loss(h: float, beta: float, eps: float = 0.0) -> float:
    return max(0.0, 1 - beta * h)


def log_softmax_at(row: Sequence[float], index: int) -> float:
    top = max(row)
    return row[index] - (top + math.log(sum(math.exp(v - top) for v in row)))


def sequence_logp(logits: Sequence[Sequence[float]], labels: Sequence[int], ignore: int, average: bool) -> float:
    """logits: T rows of V floats; labels: T ids; position t predicts labels[t + 1]."""
    terms = [log_softmax_at(logits[t], labels[t + 1]) for t in range(len(labels) - 1) if labels[t + 1] != ignore]
    if not terms:
        return 0.0
    return sum(terms) / len(terms) if average else sum(terms)


def successive_inclusion_probabilities(weights: Sequence[float], k: int) -> list[float]:
    """Exact P(item i among the k drawn) for successive sampling without replacement, by enumeration."""
    n = len(weights)
    inclusion = [0.0] * n
    for order in itertools.permutations(range(n), k):
        p, left = 1.0, sum(weights)
        for i in order:
            if left <= 0:
                p = 0.0
                break
            p *= weights[i] / left
            left -= weights[i]
        for i in order:
            inclusion[i] += p
    return inclusion


class BetaDPOReference:
    """β-DPO controller statistics and β, written from the design text (no filtering: rho = 0).

    With ``clip`` (the bound on one batch's influence, in units of σ once σ is known) and ``ratio`` (the upper clamp
    of β relative to β0); ``None`` for either gives the released code's statistics.
    """

    def __init__(
        self,
        beta: float,
        alpha: float,
        momentum: float,
        beta_min: float,
        sigma_min: float,
        clip: float | None = 3.0,
        ratio: float | None = 10.0,
    ) -> None:
        self.beta, self.alpha, self.m, self.beta_min, self.sigma_min = beta, alpha, momentum, beta_min, sigma_min
        self.clip, self.ratio = clip, ratio
        self.m0: float | None = None
        self.sigma: float | None = None

    def step(self, gaps: Sequence[float]) -> float:
        n = len(gaps)
        mean = sum(gaps) / n
        batch_mean = mean
        std = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (n - 1)) if n > 1 else None
        if self.clip is not None and self.sigma is not None and self.m0 is not None:
            low, high = self.m0 - self.clip * self.sigma, self.m0 + self.clip * self.sigma
            batch_mean = min(max(mean, low), high)
            std = None if std is None else min(std, self.clip * self.sigma)
        self.m0 = batch_mean if self.m0 is None else self.m * self.m0 + (1 - self.m) * batch_mean
        if std is not None:
            if self.sigma is not None:
                self.sigma = self.m * self.sigma + (1 - self.m) * std
            elif std > self.sigma_min:
                self.sigma = std
        beta = max(self.beta_min, self.beta * (1 + self.alpha * (mean - self.m0)))
        return beta if self.ratio is None else min(beta, self.ratio * self.beta)


def normalised_entropy(logits: Sequence[Sequence[float]], labels: Sequence[int], ignore: int) -> float:
    """Mean over response-predicting positions of H(softmax(logits[t])) / log V, in plain Python."""
    terms = []
    for t in range(len(labels) - 1):
        if labels[t + 1] == ignore:
            continue
        row = logits[t]
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        probs = [math.exp(v - log_z) for v in row]
        terms.append(-sum(p * (v - log_z) for p, v in zip(probs, row, strict=True)) / math.log(len(row)))
    return sum(terms) / len(terms) if terms else 0.0
