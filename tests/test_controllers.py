"""β-DPO controller: EMA against a closed form, clamp, degenerate batches, sampler statistics, determinism, resume."""

from __future__ import annotations

import io
import math

import pytest
import torch

from betadpo_lightning.core.controllers import (
    BetaController,
    BetaDPOController,
    ConstantBetaController,
    derive_seed,
    gumbel_topk_mask,
)
from betadpo_lightning.core.types import PairRequest
from helpers import reference_impls as ref


def _batches(count: int, n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float64) * (1 + i) + 0.3 * i for i in range(count)]


def test_controllers_follow_the_protocol():
    assert isinstance(BetaDPOController(), BetaController)
    assert isinstance(ConstantBetaController(), BetaController)


def test_ema_recurrence_matches_closed_form():
    """With rho = 0 every pair is kept, so β_t = β0 (1 + α (mean_t − M0_t)) and, for t ≥ 1 (0-based),

    M0_t = m^t μ_0 + Σ_{s=1..t} (1 − m) m^{t−s} μ_s   and   σ_t = m^t s_0 + Σ_{s=1..t} (1 − m) m^{t−s} s_s,

    where μ_s, s_s are the mean and unbiased std of batch s (every batch here has s_s > sigma_min).
    """
    m, beta0, alpha = 0.9, 0.1, 0.6
    controller = BetaDPOController(beta=beta0, alpha=alpha, rho=0.0, momentum=m, outlier_clip=None, max_beta_ratio=None)
    batches = _batches(6, 8, seed=0)
    mus = [float(b.mean()) for b in batches]
    sds = [float(b.std()) for b in batches]
    for t, batch in enumerate(batches):
        result = controller.step(batch)
        m0 = m**t * mus[0] + sum((1 - m) * m ** (t - s) * mus[s] for s in range(1, t + 1))
        sigma = m**t * sds[0] + sum((1 - m) * m ** (t - s) * sds[s] for s in range(1, t + 1))
        assert result.stats["m0"].item() == pytest.approx(m0, rel=1e-6)
        assert result.stats["sigma"].item() == pytest.approx(sigma, rel=1e-6)
        assert result.beta.item() == pytest.approx(beta0 * (1 + alpha * (mus[t] - m0)), rel=1e-6)
        assert result.keep.all()


@pytest.mark.parametrize(("clip", "ratio"), [(3.0, 10.0), (None, None), (0.5, 2.0)])
def test_against_reference_implementation_with_degenerate_batches(clip, ratio):
    """Batches of one pair, all-equal pairs and ordinary ones, in an order that exercises each rule, with the
    default outlier bounds, without them (the released code's statistics), and with tight ones."""
    kwargs = {"beta": 0.2, "alpha": 1.5, "momentum": 0.8, "beta_min": 1e-3, "sigma_min": 1e-6}
    controller = BetaDPOController(rho=0.0, outlier_clip=clip, max_beta_ratio=ratio, **kwargs)
    reference = ref.BetaDPOReference(**kwargs, clip=clip, ratio=ratio)
    sequence = [[0.0, 0.0, 0.0], [0.5], [1.0, 3.0, 2.0, 0.0], [2.0, 2.0], [-1.0, 4.0], [7.0]]
    for gaps in sequence:
        got = controller.step(torch.tensor(gaps, dtype=torch.float64))
        assert got.beta.item() == pytest.approx(reference.step(gaps), rel=1e-6)


def test_sigma_starts_from_the_first_batch_with_spread():
    controller = BetaDPOController(rho=0.0, sigma_min=1e-6)
    first = controller.step(torch.zeros(4))  # policy == reference: every margin is 0
    assert first.stats["m0"].item() == 0.0
    assert first.stats["sigma"].item() == pytest.approx(1e-6)
    assert not controller.state_dict()["sigma_ready"]
    second = controller.step(torch.tensor([1.0, 2.0, 3.0]))
    assert second.stats["sigma"].item() == pytest.approx(1.0)  # initialised to std([1, 2, 3]) = 1, not 0.1
    assert second.stats["m0"].item() == pytest.approx(0.9 * 0.0 + 0.1 * 2.0)
    third = controller.step(torch.tensor([0.0, 4.0]))  # std = 2√2
    assert third.stats["sigma"].item() == pytest.approx(0.9 * 1.0 + 0.1 * 2 * math.sqrt(2))


def test_beta_clamp():
    low = BetaDPOController(beta=0.1, alpha=1.0, rho=0.0, beta_min=0.05)
    low.step(torch.tensor([0.0, 1.0]))
    # M0 = 0.9·0.5 + 0.1·(-100) = -9.55 ⇒ mean − M0 = -90.45 ⇒ β = 0.1 (1 − 90.45) < 0 ⇒ clamped to 0.05.
    assert low.step(torch.tensor([-100.0, -100.0])).beta.item() == pytest.approx(0.05)
    high = BetaDPOController(beta=0.1, alpha=1.0, rho=0.0, beta_max=0.3)
    high.step(torch.tensor([0.0, 1.0]))
    assert high.step(torch.tensor([100.0, 100.0])).beta.item() == pytest.approx(0.3)


@pytest.mark.parametrize("gaps", [[0.0, 0.0, 0.0, 0.0, 0.0], [2.5], [3.0, 3.0]])
@pytest.mark.parametrize("rho", [0.0, 0.2, 0.9])
def test_degenerate_batches_do_not_crash(gaps, rho):
    controller = BetaDPOController(rho=rho)
    for _ in range(3):
        result = controller.step(torch.tensor(gaps))
        assert torch.isfinite(result.beta)
        assert result.keep.sum() >= 1
        assert all(torch.isfinite(v) for v in result.stats.values())


@pytest.mark.parametrize(
    ("n", "rho", "k"), [(1, 0.9, 1), (3, 0.5, 1), (10, 0.2, 8), (10, 0.3, 7), (64, 0.2, 51), (5, 0.0, 5), (2, 0.6, 1)]
)
def test_number_kept(n, rho, k):
    controller = BetaDPOController(rho=rho)
    assert controller.num_kept(n) == k
    result = controller.step(torch.linspace(-1, 1, n))
    assert result.keep.sum().item() == k
    assert result.stats["kept_fraction"].item() == pytest.approx(k / n)


def test_filtering_prefers_pairs_near_m0():
    """One far outlier (20σ) among a tight cluster is dropped with overwhelming probability."""
    controller = BetaDPOController(rho=0.2)
    gaps = torch.cat([torch.linspace(-1, 1, 9), torch.tensor([40.0])])
    assert not controller.step(gaps).keep[-1]


def test_sampler_inclusion_frequencies_match_successive_sampling():
    """Exact inclusion probabilities by enumerating all ordered draws vs 20 000 Gumbel top-k draws."""
    weights = [1.0, 2.0, 3.0, 4.0, 0.5]
    k, trials = 2, 20_000
    exact = ref.successive_inclusion_probabilities(weights, k)
    log_w = torch.log(torch.tensor(weights, dtype=torch.float64))
    generator = torch.Generator().manual_seed(1234)
    counts = torch.zeros(len(weights), dtype=torch.float64)
    for _ in range(trials):
        counts += gumbel_topk_mask(log_w, k, generator).double()
    freq = counts / trials
    for i, p in enumerate(exact):
        se = math.sqrt(p * (1 - p) / trials)
        assert abs(freq[i].item() - p) < 5 * se, (i, freq[i].item(), p)
    # Sanity of the enumeration itself: inclusion probabilities of a k-subset sum to k.
    assert sum(exact) == pytest.approx(k)


def test_zero_weight_items_never_chosen_while_k_positive_exist():
    log_w = torch.log(torch.tensor([0.0, 1.0, 0.0, 2.0, 3.0, 1e-30]))
    generator = torch.Generator().manual_seed(0)
    for _ in range(500):
        mask = gumbel_topk_mask(log_w, 4, generator)
        assert not mask[0]
        assert not mask[2]
    mask = gumbel_topk_mask(log_w, 5, generator)  # only 4 positive: exactly one zero-weight item joins
    assert mask.sum() == 5
    assert mask[[1, 3, 4, 5]].all()


def test_sampler_rejects_bad_k():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="k"):
        gumbel_topk_mask(torch.zeros(3), 0, g)
    with pytest.raises(ValueError, match="k"):
        gumbel_topk_mask(torch.zeros(3), 4, g)


def test_masks_are_determined_by_seed_and_step():
    batches = _batches(8, 20, seed=1)
    a, b, c = BetaDPOController(seed=7), BetaDPOController(seed=7), BetaDPOController(seed=8)
    masks_a = [a.step(x).keep for x in batches]
    masks_b = [b.step(x).keep for x in batches]
    masks_c = [c.step(x).keep for x in batches]
    assert all(torch.equal(x, y) for x, y in zip(masks_a, masks_b, strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(masks_a, masks_c, strict=True))
    assert derive_seed(7, 3) != derive_seed(7, 4)
    assert derive_seed(7, 3) != derive_seed(8, 3)


def test_rho_zero_draws_nothing_and_keeps_everything():
    controller = BetaDPOController(rho=0.0)
    state = torch.get_rng_state()
    result = controller.step(torch.randn(16, generator=torch.Generator().manual_seed(0)))
    assert result.keep.all()
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is never touched either


def test_global_rng_is_never_used_by_filtering():
    controller = BetaDPOController(rho=0.5)
    state = torch.get_rng_state()
    controller.step(torch.randn(16, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(state, torch.get_rng_state())


def test_save_restore_mid_sequence_equals_uninterrupted():
    batches = _batches(10, 12, seed=2)
    uninterrupted = BetaDPOController(rho=0.25, seed=3)
    full = [uninterrupted.step(x) for x in batches]

    first = BetaDPOController(rho=0.25, seed=3)
    head = [first.step(x) for x in batches[:5]]
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = BetaDPOController(rho=0.25, seed=3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    tail = [resumed.step(x) for x in batches[5:]]

    for got, want in zip(head + tail, full, strict=True):
        assert torch.equal(got.beta, want.beta)
        assert torch.equal(got.keep, want.keep)
        for key in want.stats:
            assert torch.equal(got.stats[key], want.stats[key])
    final, want_state = resumed.state_dict(), uninterrupted.state_dict()
    assert final.keys() == want_state.keys()
    assert final.pop("settings") == want_state.pop("settings")
    for key, value in want_state.items():
        assert torch.equal(torch.as_tensor(final[key]), torch.as_tensor(value)), key


def test_two_rank_caller_sees_the_concatenation():
    """A 2-rank caller gathers (a, b) in rank order; each rank's controller steps on the same global batch and
    slices its own part of the mask. Both ranks agree and equal a single process fed the concatenation."""
    a_batches, b_batches = _batches(6, 5, seed=4), _batches(6, 3, seed=5)  # uneven per-rank sizes
    rank0, rank1, single = BetaDPOController(seed=1), BetaDPOController(seed=1), BetaDPOController(seed=1)
    for a, b in zip(a_batches, b_batches, strict=True):
        gathered = torch.cat([a, b])
        r0, r1, s = rank0.step(gathered), rank1.step(gathered), single.step(torch.cat([a, b]))
        assert torch.equal(r0.beta, r1.beta)
        assert torch.equal(r0.beta, s.beta)
        assert torch.equal(r0.keep, r1.keep)
        assert torch.equal(r0.keep[: len(a)], s.keep[: len(a)])
        assert torch.equal(r1.keep[len(a) :], s.keep[len(a) :])


def test_non_finite_margins_raise():
    controller = BetaDPOController()
    with pytest.raises(FloatingPointError, match=r"positions \[1\]"):
        controller.step(torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        controller.step(torch.zeros(0))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"beta": 0.0}, "beta"),
        ({"alpha": -1.0}, "alpha"),
        ({"rho": 1.0}, "rho"),
        ({"momentum": 1.0}, "momentum"),
        ({"beta_min": 0.0}, "beta_min"),
        ({"beta_min": 0.1, "beta_max": 0.01}, "beta_max"),
        ({"sigma_min": 0.0}, "sigma_min"),
        ({"scope": "epoch"}, "scope"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        BetaDPOController(**kwargs)


def test_constant_controller():
    controller = ConstantBetaController(beta=0.25)
    result = controller.step(torch.tensor([1.0, -4.0, 2.0]))
    assert result.beta.item() == 0.25
    assert result.keep.all()
    assert controller.step(torch.zeros(2), None).beta.item() == 0.25
    assert controller.request == PairRequest()
    assert not controller.adapts_beta
    assert not controller.filters
    assert not controller.per_pair_beta
    with pytest.raises(ValueError, match="beta"):
        ConstantBetaController(beta=-1.0)


def _pooled_ema(steps: list[list[torch.Tensor]], momentum: float) -> list[tuple[float, float]]:
    """M0 and σ after each optimizer step, from the pooled margins of its micro-batches (plain Python)."""
    m0 = sigma = None
    out = []
    for micro_batches in steps:
        values = [v for mb in micro_batches for v in mb.tolist()]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        m0 = mean if m0 is None else momentum * m0 + (1 - momentum) * mean
        sigma = std if sigma is None else momentum * sigma + (1 - momentum) * std
        out.append((m0, sigma))
    return out


def test_optimizer_step_scope_updates_once_per_step_from_all_micro_batches():
    """scope="optimizer_step", 3 micro-batches per step, ρ = 0 (so β is deterministic):
    β of every micro-batch of step t is β0 (1 + α (mean(micro-batch) − M0_{t−1})), where M0_{t−1} is the EMA of the
    pooled means of steps < t; before the first update M0 is the mean of the step's micro-batches so far."""
    beta0, alpha, m = 0.1, 0.6, 0.8
    controller = BetaDPOController(beta=beta0, alpha=alpha, rho=0.0, momentum=m, scope="optimizer_step")
    steps = [_batches(3, 4, seed=10 + t) for t in range(4)]
    committed = _pooled_ema(steps, m)
    for t, micro_batches in enumerate(steps):
        for j, mb in enumerate(micro_batches):
            result = controller.step(mb)
            if t == 0:
                so_far = [v for x in micro_batches[: j + 1] for v in x.tolist()]
                m0 = sum(so_far) / len(so_far)
            else:
                m0 = committed[t - 1][0]
            assert result.beta.item() == pytest.approx(beta0 * (1 + alpha * (mb.mean().item() - m0)), rel=1e-6)
            assert result.stats["m0"].item() == pytest.approx(m0, rel=1e-6)
        controller.on_optimizer_step()
        state = controller.state_dict()
        assert state["m0"].item() == pytest.approx(committed[t][0], rel=1e-9)
        assert state["sigma"].item() == pytest.approx(committed[t][1], rel=1e-9)
    assert controller.num_updates == 4
    assert controller.num_steps == 12


def test_micro_batch_scope_ignores_the_optimizer_step_hook():
    controller, twin = BetaDPOController(), BetaDPOController()
    for gaps in _batches(4, 6, seed=3):
        controller.step(gaps)
        controller.on_optimizer_step()
        twin.step(gaps)
    assert controller.num_updates == controller.num_steps == 4
    for key, value in twin.state_dict().items():
        if key != "settings":
            assert torch.equal(torch.as_tensor(controller.state_dict()[key]), torch.as_tensor(value)), key


def test_optimizer_step_scope_resumes_mid_step():
    batches = _batches(6, 5, seed=8)
    full = BetaDPOController(rho=0.4, scope="optimizer_step", seed=2)
    first = BetaDPOController(rho=0.4, scope="optimizer_step", seed=2)
    expected, got = [], []
    for i, gaps in enumerate(batches):
        expected.append(full.step(gaps))
        if i % 2 == 1:
            full.on_optimizer_step()
    for i, gaps in enumerate(batches[:3]):  # stop after the first micro-batch of the second step
        got.append(first.step(gaps))
        if i % 2 == 1:
            first.on_optimizer_step()
    resumed = BetaDPOController(rho=0.4, scope="optimizer_step", seed=2)
    resumed.load_state_dict(first.state_dict())
    assert resumed.state_dict()["pending"][0].item() == 5  # one micro-batch of the step is pending
    for i, gaps in enumerate(batches[3:], start=3):
        got.append(resumed.step(gaps))
        if i % 2 == 1:
            resumed.on_optimizer_step()
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a.beta, b.beta)
        assert torch.equal(a.keep, b.keep)


def _course(outlier_at: int | None, **kwargs) -> list[float]:
    """β over 60 batches of 32 margins drifting upwards (N(0.05·t, 1)); batch ``outlier_at`` is ~5,000 instead."""
    controller = BetaDPOController(beta=0.1, alpha=0.6, rho=0.0, **kwargs)  # ρ = 0: β follows the statistics alone
    g, outliers = torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)
    betas = []
    for t in range(60):
        gaps = torch.randn(32, generator=g, dtype=torch.float64) + 0.05 * t  # the same batches in every course
        if t == outlier_at:
            gaps = 5000 + 50 * torch.randn(32, generator=outliers, dtype=torch.float64)
        betas.append(controller.step(gaps).beta.item())
    return betas


def test_one_outlier_batch_does_not_derail_beta():
    """With the defaults, β on the outlier batch is capped at 10·β0; the outlier moved M0 by at most (1 − m)·3σ, an
    offset that decays by m = 0.9 per batch, so β is within 10% of its course without the outlier 5 batches later and
    within 5% 15 batches later. Without the bounds (the released code) β collapses to beta_min for most of the run."""
    clean, robust = _course(None), _course(30)
    assert robust[30] == pytest.approx(1.0)  # 10·β0
    for t in range(35, 60):
        assert robust[t] == pytest.approx(clean[t], rel=0.10 if t < 45 else 0.05), t
    unbounded = _course(30, outlier_clip=None, max_beta_ratio=None)
    assert unbounded[30] > 100
    assert sum(beta <= 1.001e-3 for beta in unbounded[31:]) >= 20  # β pinned at beta_min (1e-3) while M0 decays
