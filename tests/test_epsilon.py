"""ε-DPO: signs on constructed cases, the β recursion, float32 perturbed log-probs (bf16 models too), resume, and
the refusal of meaningless combinations."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.core.controllers import BetaDPOController, EpsilonBetaController, perturbation_signs
from betadpo_lightning.core.logps import perturbed_sequence_logps
from betadpo_lightning.core.losses import MallowsThetaLoss
from betadpo_lightning.core.types import PairData, PairRequest
from betadpo_lightning.models.reference import NoReference, PrecomputedReference
from betadpo_lightning.training.module import PreferenceModule
from helpers import reference_impls as ref
from helpers.recorder import Recorder
from helpers.tiny import TINY_LLAMA, RandomPairs, collate_pairs, resumable_loader
from helpers.trainers import quiet_trainer


def _pairs(r: list[float], r_plus: list[float], r_minus: list[float]) -> PairData:
    """Pairs whose policy / plus / minus margins (chosen − rejected) are r, r⁺, r⁻ (rejected log-probs 0)."""
    zeros = torch.zeros(len(r))
    return PairData(
        torch.tensor(r),
        zeros,
        zeros,
        zeros,
        plus_chosen_logps=torch.tensor(r_plus),
        plus_rejected_logps=zeros,
        minus_chosen_logps=torch.tensor(r_minus),
        minus_rejected_logps=zeros,
    )


def test_signs_on_constructed_cases():
    """r⁺ > r > r⁻ ⇒ +1; r⁻ > r > r⁺ ⇒ −1; r outside the two or equal to one of them ⇒ 0."""
    pairs = _pairs([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 3.0, 0.0, 1.0, 2.0], [0.0, 2.0, 2.0, -1.0, 0.0, 1.0])
    assert perturbation_signs(pairs).tolist() == [1.0, -1.0, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="perturbed_logps"):
        perturbation_signs(PairData(*torch.zeros(4, 2)))


def test_beta_recursion_over_optimizer_steps():
    """Two optimizer steps of two micro-batches each: β_i = β/(1 + ε s_i) with the current β, and after each step
    β ← β/(1 + ε·mean(s)) over the step's four pairs... here 2 + 2 pairs per step."""
    beta0, eps = 0.1, 0.2
    controller = EpsilonBetaController(beta=beta0, epsilon=eps)
    steps = [
        [_pairs([1.0, 1.0], [2.0, 0.0], [0.0, 2.0]), _pairs([1.0, 1.0], [2.0, 2.0], [0.0, 0.0])],  # s: +1 −1, +1 +1
        [_pairs([1.0, 1.0], [0.0, 5.0], [2.0, 5.0]), _pairs([1.0, 1.0], [0.0, 0.0], [2.0, 2.0])],  # s: −1 0, −1 −1
    ]
    beta = beta0
    for micro_batches in steps:
        signs = []
        for pairs in micro_batches:
            s = perturbation_signs(pairs)
            result = controller.step(torch.zeros(2), pairs)
            torch.testing.assert_close(result.beta, torch.tensor([beta / (1 + eps * x) for x in s.tolist()]))
            assert result.keep.all()
            signs += s.tolist()
        controller.on_optimizer_step()
        beta = beta / (1 + eps * sum(signs) / len(signs))
        assert controller.current_beta == pytest.approx(beta, rel=1e-12)
    assert controller.beta == beta0  # β0 stays the configured value (rewards, validation)
    assert controller.num_updates == 2


def test_state_round_trip_mid_step():
    a, b = EpsilonBetaController(epsilon=0.3), EpsilonBetaController(epsilon=0.3)
    pairs = _pairs([1.0, 1.0], [2.0, 0.0], [0.0, 0.5])
    for controller in (a, b):
        controller.step(torch.zeros(2), pairs)
        controller.on_optimizer_step()
        controller.step(torch.zeros(2), pairs)
    resumed = EpsilonBetaController(epsilon=0.3)
    resumed.load_state_dict(b.state_dict())
    for controller in (a, resumed):
        controller.step(torch.zeros(2), pairs)
        controller.on_optimizer_step()
    assert resumed.current_beta == a.current_beta
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonBetaController(epsilon=1.0)


def test_perturbed_sequence_logps_against_float64():
    g = torch.Generator().manual_seed(0)
    z, z_ref = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, 3, 1, 6, -100], [-100, -100, 2, 2, 0]])
    eps = 0.25
    plus, minus = perturbed_sequence_logps(z, z_ref, labels, eps)
    for out, sign in ((plus, 1.0), (minus, -1.0)):
        mixed = ((1 + sign * eps) * z.double() - sign * eps * z_ref.double()).tolist()
        want = [ref.sequence_logp(mixed[i], labels[i].tolist(), -100, average=False) for i in range(2)]
        assert out.tolist() == pytest.approx(want, rel=1e-5)
    assert plus.dtype == torch.float32
    same = perturbed_sequence_logps(z, z, labels, eps)  # reference == policy: no perturbation at all
    torch.testing.assert_close(same[0], same[1])


def _module(**kwargs) -> PreferenceModule:
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, **kwargs)
    module.configure_model()
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_module_perturbed_logps_are_float32_and_give_nonzero_steps(dtype):
    """From the response-only head, in float32 even for a bfloat16 model: equal to the full-logits computation
    (float32) and with non-zero signs (in bf16 the released code's perturbations collapse to s = 0)."""
    module = _module()
    module.to(dtype)
    batch = collate_pairs([RandomPairs(32, seed=3)[i] for i in range(16)])
    pairs = module.forward_pairs(batch, PairRequest(frozenset({"perturbed_logps"}), epsilon=0.01))
    assert pairs.plus_chosen_logps.dtype == torch.float32
    with torch.no_grad():
        z = module.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        z_ref = module.reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    plus, minus = perturbed_sequence_logps(z, z_ref, batch["labels"], 0.01)
    tolerance = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 0.1}
    torch.testing.assert_close(torch.cat([pairs.plus_chosen_logps, pairs.plus_rejected_logps]), plus, **tolerance)
    torch.testing.assert_close(torch.cat([pairs.minus_chosen_logps, pairs.minus_rejected_logps]), minus, **tolerance)
    assert bool((perturbation_signs(pairs) != 0).any())


def _fit(tmp_path, steps, ckpt_path=None, save=False):
    pl.seed_everything(0)
    recorder = Recorder()
    callbacks = [DynamicBetaCallback(EpsilonBetaController(beta=0.1, epsilon=0.2)), recorder]
    kwargs = {}
    if save:  # a checkpoint during the run (after fit returns, Lightning counts the epoch as finished)
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1))
        kwargs["enable_checkpointing"] = True
    trainer = quiet_trainer(tmp_path, steps, callbacks, log_every_n_steps=1, accumulate_grad_batches=2, **kwargs)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=lambda p: torch.optim.AdamW(p, lr=5e-2))
    trainer.fit(module, resumable_loader(RandomPairs(32, seed=2), 4), ckpt_path=ckpt_path)
    return callbacks[0].controller, recorder


def test_resume_restores_beta_exactly(tmp_path):
    full, full_record = _fit(tmp_path / "full", 4)
    _fit(tmp_path / "first", 2, save=True)
    (checkpoint,) = (tmp_path / "first").glob("*step=2*.ckpt")
    resumed, resumed_record = _fit(tmp_path / "second", 4, ckpt_path=checkpoint)
    assert full.num_updates == resumed.num_updates == 4
    assert full.current_beta != 0.1  # β moved
    assert resumed.current_beta == full.current_beta
    assert resumed_record.losses == full_record.losses[-len(resumed_record.losses) :]


def test_meaningless_combinations_are_refused(tmp_path):
    loader = resumable_loader(RandomPairs(8), 4)
    precomputed = PreferenceModule(model_config=TINY_LLAMA, reference=PrecomputedReference())
    with pytest.raises(MisconfigurationException, match=r"EpsilonBetaController needs \['perturbed_logps'\]"):
        quiet_trainer(tmp_path, 1, [DynamicBetaCallback(EpsilonBetaController())]).fit(precomputed, loader)
    ipo = PreferenceModule(model_config=TINY_LLAMA, loss="ipo")
    with pytest.raises(MisconfigurationException, match=r"logistic link σ\(β·h\), and IPOLoss\(\) has none"):
        quiet_trainer(tmp_path, 1, [DynamicBetaCallback(EpsilonBetaController())]).fit(ipo, loader)
    free = PreferenceModule(model_config=TINY_LLAMA, loss=MallowsThetaLoss(reference_free=True))
    with pytest.raises(MisconfigurationException, match="BetaDPOController adapts β from margins relative"):
        quiet_trainer(tmp_path, 1, [DynamicBetaCallback(BetaDPOController())]).fit(free, loader)
    with pytest.raises(ValueError, match=r"MallowsThetaLoss\(.*\) needs \['reference_entropy'\].*NoReference"):
        PreferenceModule(model_config=TINY_LLAMA, loss="mallows_theta", reference=NoReference())


def test_epsilon_dpo_step_through_the_module_equals_the_formula():
    """One training step: the per-pair β_i = β/(1 + ε s_i) enters −log σ(β_i h) for every pair."""
    module = _module()
    batch = collate_pairs([RandomPairs(32, seed=5)[i] for i in range(8)])
    controller = EpsilonBetaController(beta=0.5, epsilon=0.3)

    class Provider:  # the callback's role outside a Trainer: the controller on the local pairs
        beta0 = 0.5
        request = controller.request

        def decide(self, pairs, margins, training):
            from betadpo_lightning.training.decision import BetaDecision

            result = controller.step(margins, pairs)
            self.signs = perturbation_signs(pairs)
            return BetaDecision(result.beta, result.keep, torch.tensor(float(len(pairs))))

        def skip_step(self):
            pass

    module.beta_provider = provider = Provider()
    loss = module._step(batch, "train")
    pairs = module.forward_pairs(batch, PairRequest(frozenset({"perturbed_logps"}), epsilon=0.3))
    h = (
        (pairs.policy_chosen_logps - pairs.reference_chosen_logps)
        - (pairs.policy_rejected_logps - pairs.reference_rejected_logps)
    ).tolist()
    betas = [0.5 / (1 + 0.3 * s) for s in provider.signs.tolist()]
    want = sum(ref.sigmoid_loss(hi, bi, 0.0) for hi, bi in zip(h, betas, strict=True)) / len(h)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert math.isfinite(loss.item())
