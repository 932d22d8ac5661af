"""MallowsPO: the weight, the θ losses and the ϕ link, against hand-computed cases and independent computations
(plain Python floats, mpmath at 50 digits, and the Mallows-ϕ model enumerated over permutations)."""

from __future__ import annotations

import itertools
import math

import mpmath
import pytest
import torch

from betadpo_lightning.core.losses import (
    LOSSES,
    mallows_phi_link,
    mallows_phi_log_link,
    mallows_phi_loss,
    mallows_theta_ipo_loss,
    mallows_theta_loss,
    mallows_weight,
    sigmoid_loss,
)
from helpers import reference_impls as ref

mpmath.mp.dps = 50


def test_weight_hand_computed():
    """Ĥ = (0.2 + 0.6)/2 = 0.4 ⇒ w = −0.29·log 0.4 = 0.2657; Ĥ = 1 ⇒ w = 0 (maximal dispersion)."""
    w = mallows_weight(torch.tensor([0.2, 1.0]), torch.tensor([0.6, 1.0]))
    assert w.tolist() == pytest.approx([-0.29 * math.log(0.4), 0.0], abs=1e-7)
    assert torch.isfinite(mallows_weight(torch.zeros(1), torch.zeros(1))).all()  # entropy 0 is floored
    with pytest.raises(ValueError, match="scale"):
        mallows_weight(torch.ones(1), torch.ones(1), scale=0.0)


def test_theta_loss_against_the_float64_formula():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(16, generator=g, dtype=torch.float64) * 5
    w = torch.rand(16, generator=g, dtype=torch.float64) * 2
    for beta, eps in ((0.1, 0.0), (10.0, 0.0), (0.5, 0.2)):
        got = mallows_theta_loss(h, beta, w, eps).tolist()
        want = [ref.sigmoid_loss(hi * wi, beta, eps) for hi, wi in zip(h.tolist(), w.tolist(), strict=True)]
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
        # w = 1 is plain (c)DPO
    torch.testing.assert_close(
        mallows_theta_loss(h, 0.3, torch.ones(16, dtype=torch.float64), 0.1),
        sigmoid_loss(h, 0.3, 0.1),
    )


def test_theta_ipo_hand_computed():
    """w = 2, h = 1, β = 0.5: (2·1 − 1/(2·0.5))² = (2 − 1)² = 1; w = 0.5, h = 4, β = 0.25: (2 − 2)² = 0."""
    got = mallows_theta_ipo_loss(torch.tensor([1.0, 4.0]), torch.tensor([0.5, 0.25]), torch.tensor([2.0, 0.5]))
    assert got.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="label_smoothing"):
        mallows_theta_ipo_loss(torch.ones(1), 0.1, torch.ones(1), 0.1)


def _mp_link(s: float, phi: float) -> mpmath.mpf:
    """G(s) = f(s + ½) − f(s − ½), f(n) = n / (1 − ϕ^n), f(0) = −1/log ϕ, at 50 digits (written from the formula)."""

    def f(n):
        n = mpmath.mpf(n)
        return -1 / mpmath.log(phi) if n == 0 else n / (1 - mpmath.mpf(phi) ** n)

    return f(mpmath.mpf(s) + mpmath.mpf(0.5)) - f(mpmath.mpf(s) - mpmath.mpf(0.5))


def _enumerated_marginal(k: int, phi: float, n: int = 6) -> float:
    """P(item 0 ranked before item k) under the Mallows-ϕ model on n items, by enumerating all permutations."""
    total = favourable = 0.0
    for perm in itertools.permutations(range(n)):
        inversions = sum(1 for a in range(n) for b in range(a + 1, n) if perm[a] > perm[b])
        weight = phi**inversions
        total += weight
        favourable += weight if perm.index(0) < perm.index(k) else 0.0
    return favourable / total


@pytest.mark.parametrize("phi", [0.05, 0.3, 0.6, 0.9, 0.999])
def test_phi_link_matches_the_enumerated_mallows_model(phi):
    """At s = k + ½ the link equals the Mallows-ϕ probability that two items k places apart keep their order."""
    w = torch.tensor(-math.log(phi), dtype=torch.float64)
    for k in (1, 2, 3, 5):
        got = mallows_phi_link(torch.tensor(k + 0.5, dtype=torch.float64), w).item()
        assert got == pytest.approx(_enumerated_marginal(k, phi), rel=1e-10)


@pytest.mark.parametrize("phi", [1e-6, 0.01, 0.5, 0.9, 0.99999])
def test_phi_link_against_mpmath(phi):
    w = torch.tensor(-math.log(phi), dtype=torch.float64)
    for s in (-400.0, -30.0, -3.2, -0.5, -0.2, 0.0, 1e-9, 0.3, 0.5, 0.9, 2.0, 40.0):
        want = _mp_link(s, phi)
        got = mallows_phi_log_link(torch.tensor(s, dtype=torch.float64), w).item()
        assert got == pytest.approx(float(mpmath.log(want)), rel=1e-9, abs=1e-12), (s, phi)


def test_phi_link_is_a_valid_monotone_probability_with_the_stated_limits():
    s = torch.linspace(-20, 20, 4001, dtype=torch.float64)
    for phi in (0.01, 0.3, 0.7, 0.95):
        w = torch.tensor(-math.log(phi), dtype=torch.float64)
        g = mallows_phi_link(s, w)
        assert bool(((g > 0) & (g <= 1)).all())  # 1 − G underflows to 0 far in the tail
        assert bool(torch.isfinite(mallows_phi_log_link(s, w)).all())
        assert bool((g[1:] - g[:-1] >= -1e-15).all())  # increasing
        torch.testing.assert_close(g + mallows_phi_link(-s, w), torch.ones_like(g))  # G(s) + G(−s) = 1
        assert mallows_phi_link(torch.zeros(1, dtype=torch.float64), w).item() == pytest.approx(0.5, abs=1e-12)
        far = mallows_phi_link(torch.tensor([-2000.0, 2000.0], dtype=torch.float64), w)
        assert far[0].item() < 1e-6  # → 0 as s → −∞ and → 1 as s → ∞
        assert far[1].item() > 1 - 1e-6
    # ϕ → 1 (no consensus): 1/2 everywhere; ϕ → 0 (full consensus): clip(s + ½, 0, 1).
    near_one = mallows_phi_link(s, torch.tensor(1e-7, dtype=torch.float64))
    torch.testing.assert_close(near_one, torch.full_like(s, 0.5), atol=1e-5, rtol=0)
    near_zero = mallows_phi_link(s, torch.tensor(1e4, dtype=torch.float64))  # ϕ = e^-10000; off by 1/w at s = ∓½
    torch.testing.assert_close(near_zero, (s + 0.5).clamp(0, 1), atol=2e-4, rtol=0)


def test_phi_loss_gradient_and_label_smoothing():
    h = torch.tensor([-3.0, -0.2, 0.0, 0.4, 5.0], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.5, 1.0, 2.0, 0.1, 3.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: mallows_phi_loss(x, 0.7, w), (h,))
    loss = mallows_phi_loss(h, 0.7, w, 0.1)
    want = []
    for hi, wi in zip(h.tolist(), w.tolist(), strict=True):
        phi = math.exp(-wi)
        want.append(-0.9 * mpmath.log(_mp_link(0.7 * hi, phi)) - 0.1 * mpmath.log(_mp_link(-0.7 * hi, phi)))
    want = [float(x) for x in want]
    assert loss.tolist() == pytest.approx(want, rel=1e-9)
    grad = torch.autograd.grad(mallows_phi_loss(h, 0.7, w).sum(), h)[0]
    assert bool((grad < 0).all())  # a larger margin always lowers the loss
    assert mallows_phi_loss(torch.zeros(2), 1.0, torch.ones(2)).tolist() == pytest.approx([math.log(2)] * 2)
    assert mallows_phi_loss(torch.zeros(2, dtype=torch.bfloat16), 1.0, torch.ones(2)).dtype == torch.float32


def test_registry_declares_what_the_losses_need():
    for name in ("mallows_theta", "mallows_theta_ipo", "mallows_phi"):
        assert LOSSES[name].requires == {"reference_entropy"}
    assert LOSSES["mallows_theta_ipo"]().average_logps
    assert not LOSSES["mallows_theta"]().average_logps
    classic = ("sigmoid", "robust", "ipo", "hinge", "mallows_theta", "mallows_theta_ipo", "mallows_phi")
    assert {n for n in classic if LOSSES[n].logistic} == {"sigmoid", "robust", "mallows_theta", "mallows_phi"}


@pytest.mark.parametrize(
    ("loss_type", "reference_free"), [("mallows_theta", False), ("mallows_phi", False), ("mallows_theta", True)]
)
def test_mallows_through_the_module_uses_the_reference_entropy(loss_type, reference_free):
    """The module's loss on a batch equals the formula with w(x) from the reference's full-logits
    sequence_entropy (the head computes the entropy chunk by chunk), with margins relative to the reference or
    reference-free (pc − pr, the released MallowsPO setting)."""
    import lightning.pytorch as pl

    from betadpo_lightning.core.logps import sequence_entropy
    from betadpo_lightning.training.module import PreferenceModule
    from helpers.tiny import TINY_LLAMA, RandomPairs, collate_pairs

    pl.seed_everything(0)
    loss_class = LOSSES[loss_type]
    loss_component = loss_class(home_advantage=0.1, reference_free=reference_free)
    module = PreferenceModule(model_config=TINY_LLAMA, loss=loss_component, beta=0.8)
    module.configure_model()
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = collate_pairs([RandomPairs(16, seed=6)[i] for i in range(4)])
    loss = module._step(batch, "train")
    pairs = module.forward_pairs(batch)
    with torch.no_grad():
        logits = module.reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    entropy = sequence_entropy(logits, batch["labels"])  # (2B,), the full-logits path
    torch.testing.assert_close(torch.cat([pairs.reference_chosen_entropy, pairs.reference_rejected_entropy]), entropy)
    w = mallows_weight(entropy[:4], entropy[4:])
    h = pairs.policy_chosen_logps - pairs.policy_rejected_logps
    if not reference_free:
        h = h - (pairs.reference_chosen_logps - pairs.reference_rejected_logps)
    fn = mallows_theta_loss if loss_type == "mallows_theta" else mallows_phi_loss
    want = fn((h - 0.1).detach().double(), 0.8, w.double()).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_beta_dpo_on_the_mallows_theta_loss(tmp_path):
    """Composition: β-DPO's batch β_b and keep-mask on MallowsPO-θ's per-pair loss −log σ(β_b·w·h)."""
    import lightning.pytorch as pl

    from betadpo_lightning.callbacks import DynamicBetaCallback
    from betadpo_lightning.core.controllers import BetaDPOController
    from betadpo_lightning.training.module import PreferenceModule
    from helpers.tiny import TINY_LLAMA, RandomPairs, resumable_loader
    from helpers.trainers import quiet_trainer

    pl.seed_everything(0)
    module = PreferenceModule(
        model_config=TINY_LLAMA, loss="mallows_theta", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2)
    )
    seen = []
    callback = DynamicBetaCallback(BetaDPOController(rho=0.25))
    decide = callback.decide

    def recording(pairs, margins, training):
        decision = decide(pairs, margins, training)
        seen.append((pairs, decision))
        return decision

    callback.decide = recording
    losses = []
    module.training_step = lambda batch, batch_idx: losses.append(module._step(batch, "train")) or losses[-1]
    quiet_trainer(tmp_path, 3, [callback]).fit(module, resumable_loader(RandomPairs(24), 8))
    for (pairs, decision), output in zip(seen, losses, strict=True):
        h = (
            (pairs.policy_chosen_logps - pairs.reference_chosen_logps)
            - (pairs.policy_rejected_logps - pairs.reference_rejected_logps)
        ).double()
        w = mallows_weight(pairs.reference_chosen_entropy, pairs.reference_rejected_entropy).double()
        per_pair = mallows_theta_loss(h, decision.beta.double(), w)
        want = (per_pair * decision.keep).sum() / decision.normalizer
        assert output.item() == pytest.approx(want.item(), rel=1e-5)
        assert decision.keep.sum().item() == 6  # ⌊8 · 0.75⌋
    assert len({round(d.beta.item(), 8) for _, d in seen}) > 1  # β-DPO moved β
