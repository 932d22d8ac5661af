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

from betadpo_lightning.controllers import BetaDPOController
from betadpo_lightning.losses import pair_margins
from betadpo_lightning.types import PairData


class PairScorer(pl.LightningModule):
    def __init__(self, sizes: tuple[int, ...] = (3, 5), dim: int = 4, mirror: dict | None = None) -> None:
        super().__init__()
        self.sizes, self.dim = sizes, dim
        self.w = nn.Linear(dim, 1, bias=False)
        torch.nn.init.normal_(self.w.weight, generator=torch.Generator().manual_seed(0))
        self.beta_provider = None  # the whole coupling: the callback sets this attribute
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
        decision = self.beta_provider.decide(pairs.detach())
        loss = decision.reduce(-F.logsigmoid(decision.beta * pair_margins(pairs)))
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
        decision = self.beta_provider.decide(pairs)
        return decision.reduce(-F.logsigmoid(decision.beta * pair_margins(pairs)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(64, 1)), batch_size=1)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=1)
