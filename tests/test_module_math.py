"""What the module computes, against independent computations: log-probs of a padded batch against each row run
alone in float64, every loss type against the float64 formulas, mixed precision on CPU, and the loss scale under
gradient accumulation."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.core.controllers import BetaDPOController, ConstantBetaController
from betadpo_lightning.core.losses import MallowsThetaLoss, resolve_loss
from betadpo_lightning.training.module import PreferenceModule
from helpers import reference_impls as ref
from helpers.recorder import Recorder, params_of
from helpers.tiny import TINY_LLAMA, RandomPairs, collate_pairs, resumable_loader
from helpers.trainers import quiet_trainer

NAIVE_LOSSES = {"sigmoid": ref.sigmoid_loss, "robust": ref.robust_loss, "ipo": ref.ipo_loss, "hinge": ref.hinge_loss}


def _perturbed_module(**kwargs) -> PreferenceModule:
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, **kwargs)
    module.configure_model()
    with torch.no_grad():  # make the policy differ from the reference
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


def _naive_row_logps(model: torch.nn.Module, samples: list[dict], average: bool) -> list[float]:
    """Each row alone (no padding, no attention mask), logits in float64, log-softmax in plain Python.

    Rows in the batch order: prompt + chosen for every pair, then prompt + rejected.
    """
    model = copy.deepcopy(model).double().eval()
    values = []
    for key in ("chosen_input_ids", "rejected_input_ids"):
        for sample in samples:
            prompt, response = sample["prompt_input_ids"], sample[key]
            ids = prompt + response
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].tolist()  # (T, V)
            labels = [-100] * len(prompt) + response
            values.append(ref.sequence_logp(logits, labels, ignore=-100, average=average))
    return values


@pytest.mark.parametrize("average", [False, True])
def test_logps_of_a_padded_batch_equal_each_row_alone_in_float64(average):
    """Rows of different lengths are right-padded into one (2B, T) batch with an attention mask; the module's
    log-probs of every row equal the row run alone, which checks the padding, the mask and the one-token shift."""
    module = _perturbed_module(loss=MallowsThetaLoss(average_logps=average))
    samples = [RandomPairs(16, seed=4)[i] for i in range(5)]
    batch = collate_pairs(samples)
    assert (batch["attention_mask"] == 0).any()  # there is padding to get wrong
    pairs = module.forward_pairs(batch)
    want = _naive_row_logps(module.policy, samples, average)
    got = torch.cat([pairs.policy_chosen_logps, pairs.policy_rejected_logps]).tolist()
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    want_reference = _naive_row_logps(module.reference, samples, average)
    got_reference = torch.cat([pairs.reference_chosen_logps, pairs.reference_rejected_logps]).tolist()
    assert got_reference == pytest.approx(want_reference, rel=1e-5, abs=1e-5)
    lengths = torch.cat([pairs.chosen_lengths, pairs.rejected_lengths]).tolist()
    assert lengths == [len(s[k]) for k in ("chosen_input_ids", "rejected_input_ids") for s in samples]


@pytest.mark.parametrize(
    ("loss_type", "smoothing"),
    [("sigmoid", 0.0), ("sigmoid", 0.2), ("robust", 0.1), ("hinge", 0.0), ("ipo", 0.0)],
)
def test_every_loss_through_the_module_equals_the_float64_formula(loss_type, smoothing):
    """The module's training loss on a batch is the mean over pairs of the naive formula applied to margins from
    the naive float64 log-probs (IPO: length-averaged)."""
    beta = 0.7
    loss_args = {"label_smoothing": smoothing} if smoothing else {}
    module = _perturbed_module(loss=type(resolve_loss(loss_type))(**loss_args), beta=beta)
    samples = [RandomPairs(16, seed=5)[i] for i in range(4)]
    loss = module._step(collate_pairs(samples), "train")
    average = loss_type == "ipo"
    policy = _naive_row_logps(module.policy, samples, average)
    reference = _naive_row_logps(module.reference, samples, average)
    b = len(samples)
    losses = [
        NAIVE_LOSSES[loss_type](ref.margin(policy[i], policy[b + i], reference[i], reference[b + i]), beta, smoothing)
        for i in range(b)
    ]
    assert loss.item() == pytest.approx(sum(losses) / b, rel=1e-4, abs=1e-6)


def test_bf16_mixed_precision_on_cpu_through_the_module(tmp_path):
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    module.configure_model()
    before = params_of(module.policy)
    recorder = Recorder()
    trainer = quiet_trainer(tmp_path, 3, [recorder, DynamicBetaCallback()], precision="bf16-mixed", log_every_n_steps=1)
    trainer.fit(module, resumable_loader(RandomPairs(16), 4))
    assert all(torch.isfinite(torch.tensor(recorder.losses)))
    assert recorder.losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 0
    assert {p.dtype for p in module.policy.parameters()} == {torch.float32}  # fp32 master weights
    assert any(not torch.equal(v, before[k]) for k, v in params_of(module.policy).items())
    assert len(set(recorder.betas)) > 1  # β-DPO adapted under autocast
    pairs = module.forward_pairs(collate_pairs([RandomPairs(4)[i] for i in range(2)]))
    assert pairs.policy_chosen_logps.dtype == torch.float32


def _one_sgd_step(tmp_path, batch_size: int, accumulate: int, controller) -> dict[str, torch.Tensor]:
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    module.configure_model()
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
    trainer = quiet_trainer(tmp_path, 1, [DynamicBetaCallback(controller)], accumulate_grad_batches=accumulate)
    trainer.fit(module, resumable_loader(RandomPairs(8, seed=2), batch_size))
    return params_of(module.policy)


def test_gradient_accumulation_keeps_the_loss_scale(tmp_path):
    """Plain DPO through the callback: 2 micro-batches of 4 pairs accumulated give the same SGD step as one batch of
    the same 8 pairs (each pair weighs 1/8 either way)."""
    accumulated = _one_sgd_step(tmp_path / "a", 4, 2, ConstantBetaController(beta=0.5))
    single = _one_sgd_step(tmp_path / "b", 8, 1, ConstantBetaController(beta=0.5))
    for key, value in single.items():
        torch.testing.assert_close(accumulated[key], value, rtol=1e-5, atol=1e-6, msg=key)


def _sgd_delta(tmp_path, indices: list[int], batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
    """The parameter change of one SGD step (lr 1) of plain DPO (β 0.5) on these pairs, in this order."""
    from torch.utils.data import DataLoader, Subset

    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    module.configure_model()
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
    before = params_of(module.policy)
    loader = DataLoader(Subset(RandomPairs(8, seed=2), indices), batch_size=batch_size, collate_fn=collate_pairs)
    callback = DynamicBetaCallback(ConstantBetaController(beta=0.5))
    trainer = quiet_trainer(tmp_path, 1, [callback], accumulate_grad_batches=accumulate, limit_val_batches=0)
    trainer.fit(module, loader)
    return {key: value - before[key] for key, value in params_of(module.policy).items()}


def test_unequal_micro_batches_weigh_as_the_mean_of_their_means(tmp_path):
    """The documented accumulation semantics: Lightning divides each micro-batch's loss by the accumulation count N
    and each micro-batch's loss is the mean over its kept pairs, so a kept pair of micro-batch j weighs
    1 / (N · K_j). Micro-batches of 4 and 2 pairs: the step is ½ (step on the 4) + ½ (step on the 2), not the step
    on the 6 pairs as one batch (where each pair weighs 1/6)."""
    pairs = [0, 1, 2, 3, 4, 5]
    accumulated = _sgd_delta(tmp_path / "acc", pairs, batch_size=4, accumulate=2)
    first = _sgd_delta(tmp_path / "first", pairs[:4], batch_size=4, accumulate=1)
    second = _sgd_delta(tmp_path / "second", pairs[4:], batch_size=2, accumulate=1)
    whole = _sgd_delta(tmp_path / "whole", pairs, batch_size=6, accumulate=1)
    differs = False
    for key, delta in accumulated.items():
        torch.testing.assert_close(delta, 0.5 * (first[key] + second[key]), rtol=1e-4, atol=1e-7, msg=key)
        differs |= not torch.allclose(delta, whole[key], rtol=1e-3, atol=1e-6)
    assert differs  # the two weightings are distinguishable on this data


def test_beta_dpo_with_accumulation_updates_statistics_per_optimizer_step(tmp_path):
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    callback = DynamicBetaCallback(BetaDPOController(scope="optimizer_step", rho=0.25))
    trainer = quiet_trainer(tmp_path, 3, [callback], accumulate_grad_batches=2, log_every_n_steps=1)
    trainer.fit(module, resumable_loader(RandomPairs(24), 4))
    assert callback.controller.num_steps == 6
    assert callback.controller.num_updates == 3
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
