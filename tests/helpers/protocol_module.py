"""A LightningModule that is not a PreferenceModule and follows only the documented β-provider protocol.

It scores pairs with one linear layer over fixed random features, so its margins, and the exact global loss and
gradient that a correct β-DPO step must produce, can be recomputed on every rank without any model.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from betadpo_lightning.core.controllers import BetaDPOController
from betadpo_lightning.core.losses import SigmoidLoss, pair_margins
from betadpo_lightning.core.types import PairData
from betadpo_lightning.training.decision import StaticBeta
from betadpo_lightning.training.reporting import PreferenceReporter


class PairScorer(pl.LightningModule):
    def __init__(self, sizes: tuple[int, ...] = (3, 5), dim: int = 4, mirror: dict | None = None) -> None:
        super().__init__()
        self.sizes, self.dim = sizes, dim
        self.w = nn.Linear(dim, 1, bias=False)
        torch.nn.init.normal_(self.w.weight, generator=torch.Generator().manual_seed(0))
        # The whole protocol (DynamicBetaHost): a provider the callback replaces, a loss, the extras offered.
        self.beta_provider = StaticBeta(0.2)
        self.preference_loss = SigmoidLoss()
        self.pair_extras = frozenset()
        self.reporter = PreferenceReporter()  # optional: the library's metrics, logged at Lightning's logging steps
        self.mirror = BetaDPOController(**mirror) if mirror is not None else None
        self.records: list[dict] = []
        self.checked_steps = 0

    def pairs(self, step: int, rank: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        g = torch.Generator().manual_seed(1000 * step + rank)
        n = self.sizes[rank]
        return (
            torch.randn(n, self.dim, generator=g),
            torch.randn(n, self.dim, generator=g),
            torch.randn(n, generator=g),
            torch.randn(n, generator=g),
        )

    def margins(self, weight: Tensor, step: int, rank: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        xc, xr, rc, rr = self.pairs(step, rank)
        pc, pr = xc @ weight[0], xr @ weight[0]
        return (pc - rc) - (pr - rr), pc, pr, rc, rr

    def _expected(self, step: int) -> dict:
        """What a single process holding every rank's pairs computes: β, mask and the gradient of the mean."""
        weight = self.w.weight.detach().clone().requires_grad_()
        parts = [self.margins(weight, step, r)[0] for r in range(len(self.sizes))]
        result = self.mirror.step(torch.cat(parts).detach())
        h = torch.cat(parts)
        loss = (-F.logsigmoid(result.beta * h) * result.keep).sum() / result.keep.sum()
        (grad,) = torch.autograd.grad(loss, weight)
        return {"beta": result.beta, "keep": result.keep, "grad": grad, "loss": loss.detach()}

    def training_step(self, batch, batch_idx):
        rank = self.global_rank
        _, pc, pr, rc, rr = self.margins(self.w.weight, batch_idx, rank)
        pairs = PairData(pc, pr, rc, rr)
        margins = self.preference_loss.margins(pairs)
        decision = self.beta_provider.decide(pairs.detach(), margins.detach(), training=True)
        loss = decision.reduce(self.preference_loss(pairs, decision.beta, margins))
        self.reporter.record("train", pairs, margins, self.beta_provider.beta0, decision, loss)
        record = {"beta": decision.beta.detach(), "keep": decision.keep, "normalizer": decision.normalizer}
        record["weight"] = self.w.weight.detach().clone()
        if self.mirror is not None:
            record["expected"] = self._expected(batch_idx)
        self.records.append(record)
        return loss

    def on_after_backward(self) -> None:
        # Under DDP the gradient is already averaged over the ranks here.
        record = self.records[-1]
        record["grad"] = self.w.weight.grad.detach().clone()
        if self.mirror is None:
            return
        # Checked inside the worker, so that a mismatch fails a spawned run too.
        expected, offset = record["expected"], sum(self.sizes[: self.global_rank])
        assert torch.equal(record["beta"], expected["beta"]), (record["beta"], expected["beta"])
        assert torch.equal(record["keep"], expected["keep"][offset : offset + self.sizes[self.global_rank]])
        torch.testing.assert_close(record["grad"], expected["grad"])
        self.checked_steps += 1

    def expected_accuracy(self, beta: float) -> float:
        correct = total = 0
        for step, record in enumerate(self.records):
            for rank in range(len(self.sizes)):
                margins = self.margins(record["weight"], step, rank)[0]
                correct += int((beta * margins > 0).sum())
                total += margins.numel()
        return correct / total

    def validation_step(self, batch, batch_idx):
        _, pc, pr, rc, rr = self.margins(self.w.weight, 10_000 + batch_idx, self.global_rank)
        pairs = PairData(pc, pr, rc, rr)
        margins = self.preference_loss.margins(pairs)
        decision = self.beta_provider.decide(pairs, margins, training=False)
        per_pair = self.preference_loss(pairs, decision.beta, margins)
        self.reporter.record("val", pairs, margins, self.beta_provider.beta0, decision, per_pair)
        return decision.reduce(per_pair)

    def on_train_start(self):
        self.reporter.on_train_start(self.trainer)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.reporter.log_train_if_due(self.trainer, self, {})

    def on_validation_start(self):
        self.reporter.reset_evaluation("val")

    def on_validation_epoch_end(self):
        self.reporter.log_evaluation(self.trainer, self, "val")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(64, 1)), batch_size=1)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=1)


class PerturbedScorer(PairScorer):
    """A PairScorer whose pairs also carry ε-DPO's perturbed log-probs (fixed offsets of the policy's), and a mirror
    ε-DPO controller fed the concatenation of every rank's pairs, checked against the callback at every step."""

    def __init__(self, sizes=(3, 5), epsilon: float = 0.2, accumulate: int = 2) -> None:
        super().__init__(sizes=sizes)
        self.pair_extras = frozenset({"perturbed_logps"})
        from betadpo_lightning.core.controllers import EpsilonBetaController

        self.epsilon_mirror = EpsilonBetaController(beta=0.2, epsilon=epsilon)
        self.accumulate = accumulate
        self.micro = 0

    def perturbed(self, batch_idx: int, rank: int, weight: Tensor) -> PairData:
        _, pc, pr, rc, rr = self.margins(weight, batch_idx, rank)
        g = torch.Generator().manual_seed(7919 * batch_idx + rank)
        offsets = torch.randn(4, pc.shape[0], generator=g)
        return PairData(
            pc,
            pr,
            rc,
            rr,
            plus_chosen_logps=pc + offsets[0],
            plus_rejected_logps=pr + offsets[1],
            minus_chosen_logps=pc + offsets[2],
            minus_rejected_logps=pr + offsets[3],
        )

    def training_step(self, batch, batch_idx):
        pairs = self.perturbed(batch_idx, self.global_rank, self.w.weight)
        margins = pair_margins(pairs)
        decision = self.beta_provider.decide(pairs.detach(), margins.detach(), training=True)
        everyone = cat_pairs([self.perturbed(batch_idx, r, self.w.weight).detach() for r in range(len(self.sizes))])
        expected = self.epsilon_mirror.step(torch.zeros(len(everyone)), everyone)
        offset = sum(self.sizes[: self.global_rank])
        assert torch.equal(decision.beta, expected.beta[offset : offset + len(pairs)]), (decision.beta, expected.beta)
        self.micro += 1
        if self.micro % self.accumulate == 0:
            self.epsilon_mirror.on_optimizer_step()
        self.checked_steps += 1
        return decision.reduce(-F.logsigmoid(decision.beta * margins))

    def on_after_backward(self) -> None:
        pass  # the checks happen in training_step

    def on_train_end(self) -> None:
        # The same float64 recursion on both sides: exact equality.
        assert self.beta_provider.controller.current_beta == self.epsilon_mirror.current_beta


def cat_pairs(parts: list[PairData]) -> PairData:
    names = parts[0].tensors().keys()
    return PairData(**{name: torch.cat([part.tensors()[name] for part in parts]) for name in names})
