"""DPO-family losses against hand-computed cases and an independent float64 re-implementation."""

from __future__ import annotations

import math

import pytest
import torch

from betadpo_lightning.core.losses import (
    LOSSES,
    dpo_loss,
    dpo_margins,
    hinge_loss,
    implicit_rewards,
    ipo_loss,
    robust_loss,
    sigmoid_loss,
)
from betadpo_lightning.core.types import PairData
from helpers import reference_impls as ref

REFERENCE = {"sigmoid": ref.sigmoid_loss, "robust": ref.robust_loss, "ipo": ref.ipo_loss, "hinge": ref.hinge_loss}
LOG2 = math.log(2.0)


def _logps(b: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(-torch.rand(b, generator=g, dtype=torch.float64) * 60).to(dtype) for _ in range(4)]


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.5])
def test_policy_equal_to_reference_gives_log2(label_smoothing):
    """pc = rc and pr = rr ⇒ h = 0 ⇒ ℓ = -(1-ε) log σ(0) - ε log σ(0) = log 2, whatever β and ε."""
    lp = torch.tensor([-3.0, -40.0, -0.5])
    lr = torch.tensor([-7.0, -2.0, -90.0])
    loss = dpo_loss(lp, lr, lp, lr, beta=0.37, label_smoothing=label_smoothing)
    torch.testing.assert_close(loss, torch.full((3,), LOG2))


def test_policy_equal_to_reference_other_losses():
    """h = 0: robust ⇒ ((1-ε) log 2 - ε log 2)/(1-2ε) = log 2; IPO ⇒ (0 - 1/(2β))² = 1/(4β²); hinge ⇒ relu(1) = 1."""
    h = torch.zeros(4)
    torch.testing.assert_close(robust_loss(h, 0.1, 0.2), torch.full((4,), LOG2))
    torch.testing.assert_close(ipo_loss(h, 0.5), torch.full((4,), 1.0))
    torch.testing.assert_close(ipo_loss(h, 0.1), torch.full((4,), 25.0))
    torch.testing.assert_close(hinge_loss(h, 0.1), torch.ones(4))


def test_hand_computed_logits_0_10_20():
    """β = 0.1 and margins h = (pc - rc) - (pr - rr) = 0, 100, 200 give DPO logits βh = 0, 10, 20.

    pc = [-10, 0, 50], rc = [-10, -50, -50] ⇒ pc - rc = [0, 50, 100];
    pr = [-20, -100, -100], rr = [-20, -50, 0] ⇒ pr - rr = [0, -50, -100]; so h = [0, 100, 200].

    ℓ = -log σ(x) = log(1 + e^-x): [log 2, log(1 + e^-10), log(1 + e^-20)] = [0.693147, 4.53989e-5, 2.06115e-9].
    cDPO ε = 0.1 adds ε·softplus(x) and scales by 0.9, with softplus(x) = x + softplus(-x):
    0.9·softplus(-x) + 0.1·(x + softplus(-x)) = softplus(-x) + 0.1x = [log 2, 1 + 4.53989e-5, 2 + 2.06115e-9].
    Hinge: relu(1 - x) = [1, 0, 0]. IPO (β = 0.1 ⇒ 1/(2β) = 5): (h - 5)² = [25, 9025, 38025].
    """
    pc = torch.tensor([-10.0, 0.0, 50.0], dtype=torch.float64)
    rc = torch.tensor([-10.0, -50.0, -50.0], dtype=torch.float64)
    pr = torch.tensor([-20.0, -100.0, -100.0], dtype=torch.float64)
    rr = torch.tensor([-20.0, -50.0, 0.0], dtype=torch.float64)
    h = dpo_margins(pc, pr, rc, rr)
    torch.testing.assert_close(h, torch.tensor([0.0, 100.0, 200.0], dtype=torch.float64))
    expected = torch.tensor([0.6931471805599453, 4.5398899216870535e-05, 2.0611536922e-09], dtype=torch.float64)
    torch.testing.assert_close(dpo_loss(pc, pr, rc, rr, beta=0.1), expected, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(
        dpo_loss(pc, pr, rc, rr, 0.1, 0.1),
        expected + 0.1 * torch.tensor([0.0, 10.0, 20.0], dtype=torch.float64),
        rtol=1e-9,
        atol=1e-12,
    )
    torch.testing.assert_close(hinge_loss(h, 0.1), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(ipo_loss(h, 0.1), torch.tensor([25.0, 9025.0, 38025.0], dtype=torch.float64))


DPO_FAMILY = sorted(REFERENCE)  # the classic components; MallowsPO: test_mallows.py, the rest: test_loss_family.py
SMOOTHED = {"sigmoid", "robust"}  # the components with a `label_smoothing` hyperparameter
LOSS_AND_SMOOTHING = [(name, eps) for name in DPO_FAMILY for eps in ([0.0, 0.1, 0.3] if name in SMOOTHED else [0.0])]


def _component(name: str, label_smoothing: float = 0.0):
    return LOSSES[name](label_smoothing=label_smoothing) if name in SMOOTHED else LOSSES[name]()


def _with_entropy(h: torch.Tensor) -> PairData:
    """Pairs whose margins are h (reference zero) with a reference entropy of 0.5 (MallowsPO's weight)."""
    zero, half = torch.zeros_like(h), torch.full_like(h, 0.5)
    return PairData(h, zero, zero, zero, reference_chosen_entropy=half, reference_rejected_entropy=half)


@pytest.mark.parametrize(("name", "label_smoothing"), LOSS_AND_SMOOTHING)
@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, "per_pair"])
@pytest.mark.parametrize("batch_size", [1, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_against_float64_reference(name, label_smoothing, beta, batch_size, dtype):
    loss = _component(name, label_smoothing)
    pc, pr, rc, rr = _logps(batch_size, dtype, seed=batch_size)
    if beta == "per_pair":
        beta_t = torch.linspace(0.02, 0.5, batch_size, dtype=torch.float64)
        betas = beta_t.tolist()
    else:
        beta_t, betas = beta, [beta] * batch_size
    got = loss(PairData(pc, pr, rc, rr), beta_t)
    # The reference sees exactly the values the library saw (after rounding to `dtype`).
    rows = zip(*(t.double().tolist() for t in (pc, pr, rc, rr)), strict=True)
    want = [REFERENCE[name](ref.margin(*row), b, label_smoothing) for row, b in zip(rows, betas, strict=True)]
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert got.shape == (batch_size,)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), **tol)


@pytest.mark.parametrize("name", DPO_FAMILY)
def test_gradcheck_float64(name):
    loss = _component(name, 0.2 if name in SMOOTHED else 0.0)
    pc, pr, rc, rr = (t.requires_grad_() for t in _logps(5, torch.float64, seed=3))
    beta = torch.linspace(0.05, 0.3, 5, dtype=torch.float64)

    def fn(a, b, c, d):
        return loss(PairData(a, b, c, d), beta)

    assert torch.autograd.gradcheck(fn, (pc, pr, rc, rr))


def test_gradcheck_dpo_loss_float64():
    inputs = tuple(t.requires_grad_() for t in _logps(6, torch.float64, seed=4))
    assert torch.autograd.gradcheck(lambda *x: dpo_loss(*x, beta=0.2, label_smoothing=0.1), inputs)


@pytest.mark.parametrize("name", [*DPO_FAMILY, "mallows_theta", "mallows_theta_ipo", "mallows_phi"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_nan_or_inf_at_extreme_margins(name, dtype):
    h = torch.tensor([1e4, -1e4, 0.0, 5e3, -5e3], dtype=dtype, requires_grad=True)
    component = LOSSES[name]()
    loss = component.forward(_with_entropy(h.detach()), h, 0.1)
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert torch.isfinite(h.grad).all()


def test_extreme_margin_values_are_right():
    """-log σ(1000) = log(1 + e^-1000) ≈ 0; -log σ(-1000) = 1000 + log(1 + e^-1000) ≈ 1000."""
    loss = sigmoid_loss(torch.tensor([1e4, -1e4]), 0.1)
    torch.testing.assert_close(loss, torch.tensor([0.0, 1000.0]))


def test_beta_forms_agree():
    pc, pr, rc, rr = _logps(4, torch.float32, seed=5)
    a = dpo_loss(pc, pr, rc, rr, beta=0.25)
    b = dpo_loss(pc, pr, rc, rr, beta=torch.tensor(0.25))
    c = dpo_loss(pc, pr, rc, rr, beta=torch.full((4,), 0.25))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_gradient_does_not_reach_a_detached_reference_or_beta():
    pc, pr, rc, rr = _logps(3, torch.float32, seed=6)
    pc.requires_grad_()
    beta = torch.tensor(0.1, requires_grad=True)
    dpo_loss(pc, pr, rc.detach(), rr.detach(), beta.detach()).sum().backward()
    assert pc.grad is not None
    assert torch.count_nonzero(pc.grad) == 3
    assert beta.grad is None


def test_swapping_chosen_and_rejected_flips_the_margin():
    pc, pr, rc, rr = _logps(5, torch.float64, seed=7)
    torch.testing.assert_close(dpo_margins(pc, pr, rc, rr), -dpo_margins(pr, pc, rr, rc))


def test_implicit_rewards():
    """β0 (π - π_ref): 0.1 · ((-2) - (-5)) = 0.3 and 0.1 · ((-9) - (-4)) = -0.5; detached."""
    policy = torch.tensor([-2.0, -9.0], requires_grad=True)
    rewards = implicit_rewards(policy, torch.tensor([-5.0, -4.0]), 0.1)
    torch.testing.assert_close(rewards, torch.tensor([0.3, -0.5]))
    assert not rewards.requires_grad


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda h: sigmoid_loss(h, -0.1), "`beta` > 0"),
        (lambda h: sigmoid_loss(h, torch.ones(2)), "shape"),
        (lambda h: sigmoid_loss(h, 0.1, 0.6), "label_smoothing"),
        (lambda h: robust_loss(h, 0.1, 0.5), "label_smoothing"),
        (lambda h: ipo_loss(h, 0.1, 0.1), "IPO"),
        (lambda h: hinge_loss(h, 0.1, 0.1), "hinge"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(3))


def test_ipo_asks_for_averaged_logps():
    assert LOSSES["ipo"]().average_logps
    assert not LOSSES["sigmoid"]().average_logps
