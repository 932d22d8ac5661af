"""The rest of the DPO family as loss components, against per-pair float64 re-implementations from the papers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch

from betadpo_lightning.core.losses import (
    AOTLoss,
    AOTUnpairedLoss,
    APODownLoss,
    APOZeroLoss,
    BCOPairLoss,
    CPOLoss,
    DiscoPOPLoss,
    EXOPairLoss,
    NCALoss,
    NLLLoss,
    ORPOLoss,
    PreferenceLoss,
    SigmoidNormLoss,
    SimPOLoss,
    SPPOHardLoss,
    loss_from_config,
    resolve_loss,
)
from betadpo_lightning.core.types import PairData
from helpers import reference_impls as ref

B = 6
F64 = torch.float64


class Pair(NamedTuple):
    pc: float
    pr: float
    rc: float
    rr: float
    lc: float
    lr: float


def _raw(seed: int = 0) -> dict[str, torch.Tensor]:
    """Summed float64 log-probs of B pairs: per-token means in (−2.2, −0.2), lengths 3–29, reference nearby."""
    g = torch.Generator().manual_seed(seed)
    lc, lr = (torch.randint(3, 30, (B,), generator=g).to(F64) for _ in range(2))
    pc, pr = (-(torch.rand(B, generator=g, dtype=F64) * 2 + 0.2) * n for n in (lc, lr))
    rc, rr = (p + (torch.rand(B, generator=g, dtype=F64) - 0.5) * 6 for p in (pc, pr))
    return {"pc": pc, "pr": pr, "rc": rc, "rr": rr, "lc": lc, "lr": lr}


def _pairs(raw: dict[str, torch.Tensor], average: bool) -> PairData:
    """The pairs as the module would hand them to a loss with ``average_logps`` = ``average``."""
    lc, lr = raw["lc"], raw["lr"]
    div = (lc, lr, lc, lr) if average else (1.0, 1.0, 1.0, 1.0)
    logps = [raw[k] / d for k, d in zip(("pc", "pr", "rc", "rr"), div, strict=True)]
    return PairData(*logps, chosen_lengths=lc, rejected_lengths=lr)


def _rows(raw: dict[str, torch.Tensor]) -> list[Pair]:
    return [Pair(*(float(raw[k][i]) for k in Pair._fields)) for i in range(B)]


Ref = Callable[[Pair, float], float]
CASES: dict[str, tuple[Callable[[], PreferenceLoss], Ref]] = {
    "simpo": (lambda: SimPOLoss(), lambda p, b: ref.simpo_loss(p.pc, p.pr, p.lc, p.lr, b, 0.5)),
    "simpo_smoothed": (
        lambda: SimPOLoss(gamma=1.2, label_smoothing=0.1),
        lambda p, b: ref.simpo_loss(p.pc, p.pr, p.lc, p.lr, b, 1.2, 0.1),
    ),
    "cpo": (lambda: CPOLoss(), lambda p, b: ref.cpo_loss(p.pc, p.pr, p.lc, p.lr, b, 1.0, 0.0, 0.0, 0.0, False)),
    "cpo_smoothed": (
        lambda: CPOLoss(alpha_nll=0.3, label_smoothing=0.2),
        lambda p, b: ref.cpo_loss(p.pc, p.pr, p.lc, p.lr, b, 0.3, 0.0, 0.2, 0.0, False),
    ),
    "alphapo": (
        lambda: CPOLoss(alpha_nll=0.0, alpha=0.25, gamma=0.4, average_logps=True),
        lambda p, b: ref.cpo_loss(p.pc, p.pr, p.lc, p.lr, b, 0.0, 0.25, 0.0, 0.4, True),
    ),
    "cpo_simpo": (
        lambda: CPOLoss(alpha_nll=0.5, alpha=-0.3, gamma=0.5, average_logps=True),
        lambda p, b: ref.cpo_loss(p.pc, p.pr, p.lc, p.lr, b, 0.5, -0.3, 0.0, 0.5, True),
    ),
    "orpo": (lambda: ORPOLoss(), lambda p, b: ref.orpo_loss(p.pc, p.pr, p.lc, p.lr, b)),
    "sft": (lambda: NLLLoss(), lambda p, b: ref.nll_loss(p.pc, p.lc)),
    "sft_averaged": (lambda: NLLLoss(average_logps=True), lambda p, b: ref.nll_loss(p.pc, p.lc)),
    "sigmoid_norm": (lambda: SigmoidNormLoss(), lambda p, b: ref.sigmoid_norm_loss(*p, b)),
    "apo_zero": (lambda: APOZeroLoss(), lambda p, b: 1 + ref.apo_zero_paper(p.pc - p.rc, p.pr - p.rr, b)),
    "apo_down": (lambda: APODownLoss(), lambda p, b: 1 + ref.apo_down_paper(p.pc - p.rc, p.pr - p.rr, b)),
    "nca_pair": (lambda: NCALoss(), lambda p, b: ref.nca_pair_loss(p.pc - p.rc, p.pr - p.rr, b)),
    "bco_pair": (lambda: BCOPairLoss(), lambda p, b: ref.bco_pair_loss(p.pc - p.rc, p.pr - p.rr, b)),
    "exo_pair": (lambda: EXOPairLoss(), lambda p, b: ref.exo_pair_loss(ref.margin(*p[:4]), b, 1e-3)),
    "exo_pair_0.2": (lambda: EXOPairLoss(0.2), lambda p, b: ref.exo_pair_loss(ref.margin(*p[:4]), b, 0.2)),
    "sppo_hard": (lambda: SPPOHardLoss(), lambda p, b: ref.sppo_hard_loss(p.pc - p.rc, p.pr - p.rr, b)),
    "discopop": (lambda: DiscoPOPLoss(), lambda p, b: ref.discopop_loss(ref.margin(*p[:4]), b, 0.05)),
    "discopop_tau": (lambda: DiscoPOPLoss(tau=0.5), lambda p, b: ref.discopop_loss(ref.margin(*p[:4]), b, 0.5)),
}
BETAS = {
    "float_0.1": 0.1,
    "float_2": 2.0,
    "tensor_0d": torch.tensor(0.5, dtype=F64),
    "per_pair": torch.tensor([0.05, 0.1, 0.3, 1.0, 2.5, 0.7], dtype=F64),
}


def _beta_of(beta: float | torch.Tensor, i: int) -> float:
    return float(beta[i]) if isinstance(beta, torch.Tensor) and beta.dim() else float(beta)


@pytest.mark.parametrize("beta_kind", list(BETAS))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_paper_formula(case, beta_kind):
    make, reference = CASES[case]
    loss, beta, raw = make(), BETAS[beta_kind], _raw(seed=len(case))
    got = loss(_pairs(raw, loss.average_logps), beta)
    expected = [reference(p, _beta_of(beta, i)) for i, p in enumerate(_rows(raw))]
    assert got.shape == (B,)
    assert got.dtype == F64
    torch.testing.assert_close(got, torch.tensor(expected, dtype=F64), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [0.1, 3.0, torch.tensor(0.7, dtype=F64)])
@pytest.mark.parametrize(("cls", "paired"), [(AOTLoss, True), (AOTUnpairedLoss, False)])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_aot_matches_sorted_quantiles(cls, paired, eps, beta):
    raw = _raw(seed=3)
    got = cls(label_smoothing=eps)(_pairs(raw, average=False), beta)
    rows = _rows(raw)
    if paired:  # policy chosen-minus-rejected against the reference's, each sorted
        upper, lower = [p.pc - p.pr for p in rows], [p.rc - p.rr for p in rows]
    else:  # chosen log-ratios against rejected log-ratios, each sorted
        upper, lower = [p.pc - p.rc for p in rows], [p.pr - p.rr for p in rows]
    expected = ref.aot_losses(upper, lower, float(beta), eps)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=F64), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [AOTLoss, AOTUnpairedLoss])
def test_aot_couples_the_batch(cls):
    raw = _raw(seed=4)
    perm = torch.randperm(B)
    shuffled = {k: v[perm] for k, v in raw.items()}
    loss = cls()
    # the losses are per sorted quantile: the order of the pairs does not matter at all
    torch.testing.assert_close(loss(_pairs(raw, False), 0.1), loss(_pairs(shuffled, False), 0.1))
    with pytest.raises(ValueError, match="one β"):
        loss(_pairs(raw, False), BETAS["per_pair"])
    with pytest.raises(ValueError, match="one β"):
        loss.forward(_pairs(raw, False), torch.zeros(B), BETAS["per_pair"])


def test_simpo_hand_computed():
    """Chosen: −6 over 3 tokens (mean −2); rejected: −12 over 4 tokens (mean −3) ⇒ h = −2 − (−3) = 1.

    β = 2, γ = 0.5 ⇒ z = βh − γ = 1.5 and ℓ = −log σ(1.5) = log(1 + e^−1.5) = log(1.2231302) = 0.2014133.
    ε = 0.1: 0.9·softplus(−1.5) + 0.1·softplus(1.5) = softplus(−1.5) + 0.1·1.5 = 0.3514133 (softplus(x) = x +
    softplus(−x)). The reference log-probs (here 100, absurd on purpose) are not read.
    """
    raw = {"pc": [-6.0], "pr": [-12.0], "rc": [100.0], "rr": [100.0], "lc": [3.0], "lr": [4.0]}
    pairs = _pairs({k: torch.tensor(v, dtype=F64) for k, v in raw.items()}, average=True)
    torch.testing.assert_close(SimPOLoss(gamma=0.5)(pairs, 2.0), torch.tensor([0.2014132779827524], dtype=F64))
    smoothed = SimPOLoss(gamma=0.5, label_smoothing=0.1)(pairs, 2.0)
    torch.testing.assert_close(smoothed, torch.tensor([0.3514132779827524], dtype=F64))


def test_simpo_gamma_is_not_scaled_by_beta():
    """h = 0 ⇒ ℓ = −log σ(−γ) = softplus(γ) for every β: the target margin does not follow β."""
    lp = torch.tensor([-1.3, -0.4], dtype=F64)
    for beta in (0.1, 2.5, 10.0):
        got = SimPOLoss(gamma=0.8)(PairData(lp, lp, lp, lp), beta)
        torch.testing.assert_close(got, torch.full((2,), math.log1p(math.exp(0.8)), dtype=F64))


def test_orpo_hand_computed():
    """Chosen mean log-prob −log 2 (P = 1/2, odds 1); rejected −log 4 (P = 1/4, odds 1/3).

    log odds ratio = log 1 − log(1/3) = log 3, log σ(log 3) = log(3/(3 + 1)) = log 0.75; NLL = log 2.
    λ = β = 0.1: ℓ = log 2 − 0.1·log 0.75 = 0.6931472 + 0.0287682 = 0.7219154. λ = 1: log 2 − log 0.75 = log(8/3).
    """
    pc, pr = torch.tensor([-math.log(2)], dtype=F64), torch.tensor([-math.log(4)], dtype=F64)
    pairs = PairData(pc, pr, torch.zeros(1, dtype=F64), torch.zeros(1, dtype=F64))
    torch.testing.assert_close(ORPOLoss()(pairs, 0.1), torch.tensor([0.7219153515], dtype=F64))
    torch.testing.assert_close(ORPOLoss()(pairs, 1.0), torch.tensor([math.log(8 / 3)], dtype=F64))


def test_nll_hand_computed():
    """Summed −12 over 4 tokens ⇒ 3; averaged −2.5 ⇒ 2.5; β is not read (a negative one would be refused)."""
    lp, n = torch.tensor([-12.0]), torch.tensor([4.0])
    assert NLLLoss()(PairData(lp, lp, lp, lp, chosen_lengths=n, rejected_lengths=n), 0.1).tolist() == [3.0]
    avg = torch.tensor([-2.5])
    assert NLLLoss(average_logps=True)(PairData(avg, avg, avg, avg), -1.0).tolist() == [2.5]
    with pytest.raises(ValueError, match="lengths"):
        NLLLoss()(PairData(lp, lp, lp, lp), 0.1)


@pytest.mark.parametrize("case", [*CASES, "aot", "aot_unpaired"])
def test_gradcheck_wrt_policy_logps(case):
    loss = {"aot": AOTLoss(0.1), "aot_unpaired": AOTUnpairedLoss(0.1)}.get(case) or CASES.get(case)[0]()
    raw = _raw(seed=11)
    fixed = _pairs(raw, loss.average_logps)

    def fn(pc, pr):
        pairs = PairData(pc, pr, fixed.reference_chosen_logps, fixed.reference_rejected_logps, raw["lc"], raw["lr"])
        return loss(pairs, 0.3)

    inputs = (fixed.policy_chosen_logps.clone().requires_grad_(), fixed.policy_rejected_logps.clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs)


#: short name: (class, average_logps, needs_reference, beta_scales_margin, logistic, pairwise, reads_beta, requires)
DECLARATIONS = {
    "simpo": (SimPOLoss, True, False, True, False, True, True, set()),
    "cpo": (CPOLoss, False, False, True, False, True, True, {"lengths"}),
    "orpo": (ORPOLoss, True, False, False, False, True, True, set()),
    "sft": (NLLLoss, False, False, False, False, True, False, {"lengths"}),
    "sigmoid_norm": (SigmoidNormLoss, True, True, True, True, True, True, set()),
    "apo_zero": (APOZeroLoss, False, True, True, False, True, True, set()),
    "apo_down": (APODownLoss, False, True, True, False, True, True, set()),
    "nca_pair": (NCALoss, False, True, True, False, True, True, set()),
    "bco_pair": (BCOPairLoss, False, True, True, False, True, True, set()),
    "exo_pair": (EXOPairLoss, False, True, True, True, True, True, set()),
    "sppo_hard": (SPPOHardLoss, False, True, True, False, True, True, set()),
    "discopop": (DiscoPOPLoss, False, True, True, False, True, True, set()),
    "aot": (AOTLoss, False, True, True, False, False, True, set()),
    "aot_unpaired": (AOTUnpairedLoss, False, True, True, False, False, True, set()),
}
FLAGS = ("average_logps", "needs_reference", "beta_scales_margin", "logistic", "pairwise", "reads_beta")


@pytest.mark.parametrize("name", list(DECLARATIONS))
def test_short_name_and_declarations(name):
    loss = resolve_loss(name)
    cls, *flags, requires = DECLARATIONS[name]
    assert type(loss) is cls
    assert loss == cls()
    assert {f: getattr(loss, f) for f in FLAGS} == dict(zip(FLAGS, flags, strict=True))
    assert loss.requires == requires


def test_declarations_that_follow_the_arguments():
    assert SimPOLoss().needs_reference is False
    assert CPOLoss(average_logps=True).requires == set()
    assert CPOLoss(average_logps=True).average_logps
    assert CPOLoss(alpha_nll=0.0).requires == set()
    assert NLLLoss(average_logps=True).requires == set()
    assert NLLLoss(average_logps=True).average_logps
    assert NLLLoss().reads_beta is False
    assert resolve_loss("sigmoid").reads_beta is True


@pytest.mark.parametrize("case", [*CASES, "aot"])
def test_config_round_trip(case):
    loss = AOTLoss(label_smoothing=0.25) if case == "aot" else CASES[case][0]()
    config = loss.config()
    rebuilt = loss_from_config(config)
    assert type(rebuilt) is type(loss)
    assert rebuilt == loss
    assert rebuilt.config() == config
    assert resolve_loss(config) == loss
    assert {f: getattr(rebuilt, f) for f in FLAGS} == {f: getattr(loss, f) for f in FLAGS}


def test_refusals():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        EXOPairLoss(label_smoothing=0.0)
    with pytest.raises(ValueError, match="tau"):
        DiscoPOPLoss(tau=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        SimPOLoss(label_smoothing=0.6)
    with pytest.raises(ValueError, match="alpha_nll"):
        CPOLoss(alpha_nll=-1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        AOTUnpairedLoss(label_smoothing=-0.1)
    with pytest.raises(ValueError, match="beta"):
        BCOPairLoss()(PairData(*torch.zeros(4, 2)), 0.0)


@pytest.mark.parametrize("name", ["simpo", "cpo", "orpo", "sft"])
def test_reference_free_losses_ignore_the_reference(name):
    raw = _raw(seed=5)
    loss = resolve_loss(name)
    zeroed = {**raw, "rc": torch.zeros(B, dtype=F64), "rr": torch.zeros(B, dtype=F64)}
    torch.testing.assert_close(
        loss(_pairs(raw, loss.average_logps), 0.5), loss(_pairs(zeroed, loss.average_logps), 0.5)
    )


@pytest.mark.parametrize("name", ["simpo", "orpo", "exo_pair", "discopop", "apo_down", "sppo_hard"])
def test_half_precision_is_computed_in_float32(name):
    raw = {k: v.to(torch.bfloat16) for k, v in _raw(seed=6).items()}
    loss = resolve_loss(name)
    got = loss(_pairs(raw, loss.average_logps), 0.1)
    assert got.dtype == torch.float32
    assert bool(torch.isfinite(got).all())


def test_discopop_is_finite_for_large_negative_margins():
    """βh = −200 in float32: TRL's σ(βh/τ)·e^{−βh} is 0·inf = nan; here the blend is ≈ softplus(200) = 200."""
    h = torch.tensor([-2000.0, 2000.0])
    pairs = PairData(h, torch.zeros(2), torch.zeros(2), torch.zeros(2))
    got = DiscoPOPLoss()(pairs, 0.1)
    torch.testing.assert_close(got, torch.tensor([200.0, 0.0]))
