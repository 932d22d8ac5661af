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


# ---------------------------------------------------------------- the rest of the DPO family, from the papers
# Each takes one pair: summed log-probabilities pc, pr (policy), rc, rr (reference) and response lengths lc, lr.


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    e = math.exp(x)
    return e / (1 + e)


def simpo_loss(pc: float, pr: float, lc: float, lr: float, beta: float, gamma: float, eps: float = 0.0) -> float:
    # SimPO eq. 6: −log σ(β/|y_w| log π(y_w) − β/|y_l| log π(y_l) − γ), cDPO-smoothed with ε.
    z = beta * pc / lc - beta * pr / lr - gamma
    return -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)


def alphapo_reward(logp: float, alpha: float) -> float:
    # AlphaPO: r = (1 − p^(−α))/α with p = π(y|x) (length-normalised: p = exp(mean log-prob)); α → 0 gives log p.
    if alpha == 0:
        return logp
    return (1 - math.exp(logp) ** (-alpha)) / alpha


def cpo_loss(
    pc: float,
    pr: float,
    lc: float,
    lr: float,
    beta: float,
    alpha_nll: float,
    alpha: float,
    eps: float,
    gamma: float,
    average: bool,
) -> float:
    # CPO eq. 3 (+ AlphaPO's reward and SimPO's γ): sigmoid on the reward difference plus α_nll · token-mean NLL.
    lw, ll = (pc / lc, pr / lr) if average else (pc, pr)
    z = beta * (alphapo_reward(lw, alpha) - alphapo_reward(ll, alpha)) - gamma
    preference = -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)
    return preference + alpha_nll * (-pc / lc)


def orpo_loss(pc: float, pr: float, lc: float, lr: float, lam: float) -> float:
    # ORPO eqs. 4–7: P = exp(mean log-prob), odds = P/(1 − P); L = NLL − λ log σ(log(odds_w/odds_l)).
    p_w, p_l = math.exp(pc / lc), math.exp(pr / lr)
    odds_w, odds_l = p_w / (1 - p_w), p_l / (1 - p_l)
    return -pc / lc - lam * log_sigmoid(math.log(odds_w / odds_l))


def nll_loss(pc: float, lc: float) -> float:
    return -pc / lc


def sigmoid_norm_loss(pc: float, pr: float, rc: float, rr: float, lc: float, lr: float, beta: float) -> float:
    # TRL sigmoid_norm: log-ratios divided by the completion lengths, then DPO's −log σ(β·Δ).
    return -log_sigmoid(beta * ((pc - rc) / lc - (pr - rr) / lr))


def apo_zero_paper(rw: float, rl: float, beta: float) -> float:
    # APO eq. 7 (no constant): −σ(β r_w) + σ(β r_l).
    return -sigmoid(beta * rw) + sigmoid(beta * rl)


def apo_down_paper(rw: float, rl: float, beta: float) -> float:
    # APO eq. 8 (no constant): σ(β r_w) − σ(β (r_w − r_l)).
    return sigmoid(beta * rw) - sigmoid(beta * (rw - rl))


def nca_pair_loss(rw: float, rl: float, beta: float) -> float:
    # NCA (K = 2): −log σ(r_w) − ½ Σ_{y ∈ {w, l}} log σ(−r_y), rewards r = β log-ratio.
    return -log_sigmoid(beta * rw) - 0.5 * (log_sigmoid(-beta * rw) + log_sigmoid(-beta * rl))


def bco_pair_loss(rw: float, rl: float, beta: float, delta: float = 0.0) -> float:
    # BCO: chosen labelled 1, rejected 0, logit = reward − δ (δ = 0 in TRL 1.x).
    return -log_sigmoid(beta * rw - delta) - log_sigmoid(-(beta * rl - delta))


def exo_pair_loss(h: float, beta: float, eps: float) -> float:
    # EXO eq. 16 for K = 2: KL(q ‖ p), q = (σ(βh), 1 − σ(βh)), p = (1 − ε, ε).
    q = sigmoid(beta * h)
    return q * math.log(q / (1 - eps)) + (1 - q) * math.log((1 - q) / eps)


def sppo_hard_loss(rw: float, rl: float, beta: float) -> float:
    # SPPO eq. 4.7 with η = 1/β, P(y_w ≻ π) = 1, P(y_l ≻ π) = 0: (r_w − η/2)² + (r_l + η/2)².
    eta = 1 / beta
    return (rw - eta * (1 - 0.5)) ** 2 + (rl - eta * (0 - 0.5)) ** 2


def discopop_loss(h: float, beta: float, tau: float) -> float:
    # DiscoPOP eq. 5: ρ = βh, f = (1 − σ(ρ/τ)) · (−log σ(ρ)) + σ(ρ/τ) · exp(−ρ).
    rho = beta * h
    m = sigmoid(rho / tau)
    return (1 - m) * -log_sigmoid(rho) + (m * math.exp(-rho) if m > 0 else 0.0)


def aot_losses(upper: Sequence[float], lower: Sequence[float], beta: float, eps: float) -> list[float]:
    # AOT: the i-th smallest of `upper` against the i-th smallest of `lower`, logistic with cDPO smoothing.
    deltas = [u - v for u, v in zip(sorted(upper), sorted(lower), strict=True)]
    return [-(1 - eps) * log_sigmoid(beta * d) - eps * log_sigmoid(-beta * d) for d in deltas]


def wpo_log_weight(logits: Sequence[Sequence[float]], labels: Sequence[int]) -> float:
    """WPO eq. 2: mean over tokens t of log( p(y_t) / Σ_v p_v(t)² ); row t of logits scores labels[t]."""
    terms = []
    for row, label in zip(logits, labels, strict=True):
        top = max(row)
        z = sum(math.exp(v - top) for v in row)
        probs = [math.exp(v - top) / z for v in row]
        terms.append(math.log(probs[label] / sum(p * p for p in probs)))
    return sum(terms) / len(terms)


def wpo_weight(chosen_log_weight: float, rejected_log_weight: float) -> float:
    return min(1.0, math.exp(chosen_log_weight + rejected_log_weight))
