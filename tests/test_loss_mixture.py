"""Loss mixtures (RPO, MPO), WPO weighting and the registry: combination rules, refusals and round trips."""

from __future__ import annotations

import json
import math

import pytest
import torch

import betadpo_lightning.core.losses.base as base_module
from betadpo_lightning.core.losses import (
    LOSSES,
    AOTLoss,
    BCOPairLoss,
    IPOLoss,
    LossMixture,
    MallowsThetaLoss,
    NLLLoss,
    ORPOLoss,
    PreferenceLoss,
    SigmoidLoss,
    SigmoidNormLoss,
    SimPOLoss,
    WPOWeighted,
    loss_from_config,
    resolve_loss,
)
from betadpo_lightning.core.types import PairData
from helpers import reference_impls as ref

B = 5
F64 = torch.float64


def _pairs(seed: int = 0, **extra: torch.Tensor) -> PairData:
    """Summed float64 log-probs with lengths, reference near the policy."""
    g = torch.Generator().manual_seed(seed)
    lc, lr = (torch.randint(3, 20, (B,), generator=g).to(F64) for _ in range(2))
    pc, pr = (-(torch.rand(B, generator=g, dtype=F64) + 0.3) * n for n in (lc, lr))
    rc, rr = (p + torch.randn(B, generator=g, dtype=F64) for p in (pc, pr))
    return PairData(pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lr, **extra)


def _rows(pairs: PairData) -> list[tuple[float, ...]]:
    fields = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps")
    fields += ("chosen_lengths", "rejected_lengths")
    return list(zip(*(getattr(pairs, f).tolist() for f in fields), strict=True))


@pytest.mark.parametrize(
    "beta", [0.1, torch.tensor(0.4, dtype=F64), torch.tensor([0.1, 0.2, 0.5, 1.0, 3.0], dtype=F64)]
)
def test_rpo_and_mpo_are_weighted_sums(beta):
    pairs = _pairs()
    rpo = LossMixture([SigmoidLoss(), NLLLoss()], [1.0, 0.5])
    mpo = LossMixture([SigmoidLoss(), BCOPairLoss(), NLLLoss()], [0.8, 0.2, 1.0])
    rpo_ref, mpo_ref = [], []
    for i, (pc, pr, rc, rr, lc, _) in enumerate(_rows(pairs)):
        b = float(beta[i]) if isinstance(beta, torch.Tensor) and beta.dim() else float(beta)
        dpo, nll = ref.sigmoid_loss(ref.margin(pc, pr, rc, rr), b, 0.0), ref.nll_loss(pc, lc)
        rpo_ref.append(dpo + 0.5 * nll)
        mpo_ref.append(0.8 * dpo + 0.2 * ref.bco_pair_loss(pc - rc, pr - rr, b) + nll)
    torch.testing.assert_close(rpo(pairs, beta), torch.tensor(rpo_ref, dtype=F64), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mpo(pairs, beta), torch.tensor(mpo_ref, dtype=F64), rtol=1e-10, atol=1e-12)


def test_default_weights_are_one():
    pairs = _pairs(1)
    mixture = LossMixture([SigmoidLoss(0.1), BCOPairLoss()])
    assert mixture.weights == [1.0, 1.0]
    torch.testing.assert_close(mixture(pairs, 0.3), SigmoidLoss(0.1)(pairs, 0.3) + BCOPairLoss()(pairs, 0.3))


def test_margins_are_computed_once(monkeypatch):
    calls = []
    original = base_module.pair_margins
    monkeypatch.setattr(base_module, "pair_margins", lambda *a, **k: calls.append(1) or original(*a, **k))
    LossMixture([SigmoidLoss(), BCOPairLoss(), SigmoidLoss(0.2), NLLLoss()])(_pairs(), 0.1)
    assert len(calls) == 1


def test_declarations_combine():
    rpo = LossMixture([SigmoidLoss(), NLLLoss()])
    assert (rpo.requires, rpo.average_logps, rpo.needs_reference, rpo.pairwise) == ({"lengths"}, False, True, True)
    assert (rpo.beta_scales_margin, rpo.logistic, rpo.reads_beta) == (True, True, True)
    cpo_simpo = LossMixture([SimPOLoss(), NLLLoss(average_logps=True)])
    assert (cpo_simpo.requires, cpo_simpo.average_logps, cpo_simpo.needs_reference) == (set(), True, False)
    assert (cpo_simpo.beta_scales_margin, cpo_simpo.logistic) == (True, False)
    orpo_simpo = LossMixture([ORPOLoss(), SimPOLoss()])
    assert not orpo_simpo.beta_scales_margin  # ORPO's β is a weight
    nll_only = LossMixture([NLLLoss()])
    flags = (nll_only.reads_beta, nll_only.beta_scales_margin, nll_only.logistic, nll_only.needs_reference)
    assert flags == (False, False, False, False)
    with_aot = LossMixture([SigmoidLoss(), AOTLoss()])
    assert not with_aot.pairwise
    with pytest.raises(ValueError, match="one β"):
        with_aot(_pairs(), torch.full((B,), 0.1, dtype=F64))
    mallows = LossMixture([MallowsThetaLoss(home_advantage=0.5), NLLLoss()])
    assert mallows.requires == {"reference_entropy", "lengths"}


def test_a_lone_beta_reader_keeps_its_own_margins():
    e = torch.full((B,), 0.5, dtype=F64)
    pairs = _pairs(2, reference_chosen_entropy=e, reference_rejected_entropy=e)
    mallows = MallowsThetaLoss(home_advantage=0.5)
    mixture = LossMixture([mallows, NLLLoss()], [1.0, 0.1])
    torch.testing.assert_close(mixture.margins(pairs), mallows.margins(pairs))
    torch.testing.assert_close(mixture(pairs, 0.2), mallows(pairs, 0.2) + 0.1 * NLLLoss()(pairs, 0.2))


def test_refusals():
    with pytest.raises(ValueError, match=r"IPOLoss\(\) has average_logps=True.*SigmoidLoss"):
        LossMixture([IPOLoss(), SigmoidLoss()])
    with pytest.raises(ValueError, match="needs_reference"):
        LossMixture([SimPOLoss(), SigmoidNormLoss()])  # both averaged; one reference-free, one not
    with pytest.raises(ValueError, match="defines its own margins"):
        LossMixture([MallowsThetaLoss(), SigmoidLoss()])
    with pytest.raises(ValueError, match="2 losses but 1 weights"):
        LossMixture([SigmoidLoss(), NLLLoss()], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        LossMixture([])
    with pytest.raises(ValueError, match="finite"):
        LossMixture([SigmoidLoss()], [math.nan])
    with pytest.raises(ValueError, match="extras"):
        LossMixture([SigmoidLoss(), NLLLoss()])(PairData(*torch.zeros(4, B)), 0.1)  # no lengths


def test_gradcheck_mixture():
    pairs = _pairs(3)
    mixture = LossMixture([SigmoidLoss(0.1), BCOPairLoss(), NLLLoss()], [0.8, 0.2, 1.0])

    def fn(pc, pr):
        return mixture(PairData(pc, pr, *_rows_tail(pairs)), 0.3)

    inputs = (pairs.policy_chosen_logps.clone().requires_grad_(), pairs.policy_rejected_logps.clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs)


def _rows_tail(pairs: PairData) -> tuple[torch.Tensor, ...]:
    return (pairs.reference_chosen_logps, pairs.reference_rejected_logps, pairs.chosen_lengths, pairs.rejected_lengths)


NESTED = [
    LossMixture([SigmoidLoss(0.1), BCOPairLoss(), NLLLoss()], [0.8, 0.2, 1.0]),
    LossMixture([SimPOLoss(gamma=1.0), NLLLoss(average_logps=True)], [1.0, 0.05]),
    WPOWeighted(SigmoidLoss()),
    WPOWeighted(LossMixture([SigmoidLoss(), NLLLoss()], [1.0, 0.3])),
    LossMixture([WPOWeighted(IPOLoss()), NLLLoss(average_logps=True)]),
]


@pytest.mark.parametrize("loss", NESTED, ids=repr)
def test_nested_configs_round_trip(loss):
    config = json.loads(json.dumps(loss.config()))  # plain data, as a checkpoint's hyperparameters hold it
    rebuilt = loss_from_config(config)
    assert rebuilt == loss
    assert rebuilt.config() == loss.config()
    assert resolve_loss(config) == loss
    flags = ("requires", "average_logps", "needs_reference", "beta_scales_margin", "logistic", "pairwise")
    assert {f: getattr(rebuilt, f) for f in flags} == {f: getattr(loss, f) for f in flags}


# ------------------------------------------------------------------------------------------------------------ WPO
def _wpo_extra(seed: int, peaked: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-weights of B chosen and B rejected responses from random logits, by the paper's formula in plain Python."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2 * B):
        logits = torch.randn(4, 6, generator=g, dtype=F64) * (4.0 if peaked else 1.0)
        labels = logits.argmax(-1) if peaked else torch.randint(0, 6, (4,), generator=g)
        out.append(ref.wpo_log_weight(logits.tolist(), labels.tolist()))
        # the forward pass's torch form (TRL's): log p(y) − (logsumexp(2z) − 2 logsumexp(z)), averaged over tokens
        logp = torch.log_softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1)
        torch_form = logp - (torch.logsumexp(2 * logits, -1) - 2 * torch.logsumexp(logits, -1))
        assert math.isclose(float(torch_form.mean()), out[-1], rel_tol=1e-12, abs_tol=1e-12)
    values = torch.tensor(out, dtype=F64)
    return values[:B], values[B:]


@pytest.mark.parametrize("peaked", [False, True])
@pytest.mark.parametrize("inner", [SigmoidLoss(), BCOPairLoss(), LossMixture([SigmoidLoss(), NLLLoss()])], ids=repr)
def test_wpo_weight_equals_the_formula(inner, peaked):
    wc, wr = _wpo_extra(seed=7, peaked=peaked)
    pairs = _pairs(4, policy_chosen_wpo=wc, policy_rejected_wpo=wr)
    weights = torch.tensor([ref.wpo_weight(c, r) for c, r in zip(wc.tolist(), wr.tolist(), strict=True)], dtype=F64)
    if peaked:  # the observed tokens are the likeliest: p(y)/Σp² > 1, and the clamp at 1 acts
        assert bool((weights == 1.0).all())
    else:
        assert bool((weights < 1.0).all())
    torch.testing.assert_close(WPOWeighted(inner)(pairs, 0.2), weights * inner(pairs, 0.2), rtol=1e-12, atol=1e-14)


def test_wpo_weight_is_detached():
    wc, wr = (t.clone().requires_grad_() for t in _wpo_extra(seed=8, peaked=False))
    pairs = _pairs(5, policy_chosen_wpo=wc, policy_rejected_wpo=wr)
    pc = pairs.policy_chosen_logps.clone().requires_grad_()
    weighted = PairData(**{**pairs.tensors(), "policy_chosen_logps": pc})
    WPOWeighted(SigmoidLoss())(weighted, 0.5).sum().backward()
    assert wc.grad is None
    assert wr.grad is None
    plain = pairs.policy_chosen_logps.clone().requires_grad_()
    SigmoidLoss()(PairData(**{**pairs.tensors(), "policy_chosen_logps": plain}), 0.5).sum().backward()
    torch.testing.assert_close(pc.grad, plain.grad * torch.exp(wc + wr).clamp(max=1).detach())


def test_wpo_declarations_and_refusals():
    wpo = WPOWeighted(SimPOLoss())
    assert wpo.requires == {"wpo"}
    assert (wpo.average_logps, wpo.needs_reference, wpo.beta_scales_margin, wpo.logistic) == (True, False, True, False)
    assert WPOWeighted(NLLLoss()).requires == {"wpo", "lengths"}
    with pytest.raises(ValueError, match="sorts them"):
        WPOWeighted(AOTLoss())
    with pytest.raises(ValueError, match="sorts them"):
        WPOWeighted(LossMixture([SigmoidLoss(), AOTLoss()]))
    with pytest.raises(ValueError, match="wpo"):
        WPOWeighted(SigmoidLoss())(_pairs(), 0.1)


# ------------------------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_round_trips(name):
    cls = LOSSES[name]
    assert isinstance(cls, type)
    assert issubclass(cls, PreferenceLoss)
    loss = resolve_loss(name)
    assert type(loss) is cls
    config = json.loads(json.dumps(loss.config()))
    assert loss_from_config(config) == loss
    assert loss_from_config(config).config() == loss.config()
