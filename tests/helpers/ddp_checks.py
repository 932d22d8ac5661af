"""Checks that run inside spawned DDP workers and report back through ``callback_metrics``."""

from __future__ import annotations

import lightning.pytorch as pl
import torch


class CrossRankCheck(pl.Callback):
    """After each training batch: β and the callback's global keep-mask are identical on every rank."""

    def __init__(self) -> None:
        self.checked = 0
        self.last_beta = None
        self.betas: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        provider = pl_module.beta_provider
        decide = provider.decide

        def recording(pairs, margins, training):
            decision = decide(pairs, margins, training)
            self.last_beta = decision.beta.detach().float().mean().reshape(1)
            self.betas.append(float(self.last_beta))
            return decision

        provider.decide = recording

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        beta = self.last_beta
        betas = pl_module.all_gather(beta)  # (W, 1)
        assert torch.equal(betas, betas[:1].expand_as(betas)), betas
        state = pl_module.beta_provider.controller.state_dict()
        stats = torch.stack([state["m0"].float(), state["sigma"].float(), torch.tensor(float(state["steps"]))])
        gathered = pl_module.all_gather(stats)  # (W, 3)
        assert torch.equal(gathered, gathered[:1].expand_as(gathered)), gathered
        if isinstance(batch, dict) and "pair_index" in batch:  # the ranks train on different pairs
            indices = pl_module.all_gather(batch["pair_index"])  # (W, B)
            assert not set(indices[0].tolist()) & set(indices[1].tolist()), indices
        self.checked += 1
        pl_module.log("checked_steps", float(self.checked), on_step=True, batch_size=1)


class AccuracyCheck(pl.Callback):
    """At the end of training: the logged reward accuracy equals the one recomputed over every rank's pairs."""

    def on_train_end(self, trainer, pl_module) -> None:
        logged = trainer.callback_metrics["train/rewards/accuracies"].item()
        expected = pl_module.expected_accuracy(pl_module.beta_provider.controller.beta)
        assert abs(logged - expected) < 1e-6, (logged, expected)
        assert pl_module.checked_steps == trainer.global_step


class SameWeights(pl.Callback):
    """At the end of training every rank holds the same policy weights and the same count of skipped steps."""

    def on_train_end(self, trainer, pl_module) -> None:
        checksum = torch.stack([p.detach().double().sum() for p in pl_module.policy.parameters()]).sum().reshape(1)
        gathered = pl_module.all_gather(checksum)  # (W, 1)
        assert torch.equal(gathered, gathered[:1].expand_as(gathered)), gathered
        skipped = pl_module.all_gather(torch.tensor([float(pl_module._guard.skipped)]))
        assert torch.equal(skipped, torch.ones_like(skipped)), skipped

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log("guard_skipped", float(pl_module._guard.skipped), batch_size=1)
