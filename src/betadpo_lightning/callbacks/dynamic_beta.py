"""DynamicBetaCallback: β-DPO's controller, its cross-rank synchronisation and the preference metrics."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from betadpo_lightning.callbacks.protocol import STEP_OUTPUT_KEYS, BetaDecision
from betadpo_lightning.controllers import BetaDPOController, BetaStep
from betadpo_lightning.metrics import PreferenceMetrics

__all__ = ["DynamicBetaCallback"]


class DynamicBetaCallback(Callback):
    r"""β-DPO for any LightningModule that follows :mod:`betadpo_lightning.callbacks.protocol`.

    Owns a :class:`~betadpo_lightning.controllers.BetaDPOController`. Inside each training step the module calls
    :meth:`decide` with its margins; the callback gathers the margins of all ranks through the Lightning strategy
    (ranks may hold different numbers of pairs), steps the controller once on the global batch (update the running
    statistics, filter, compute β), and hands back β, this rank's keep-mask and the global normaliser. Validation
    uses the current statistics without changing them and keeps every pair. The controller's state is saved in and
    restored from checkpoints.

    It also logs, per training step, ``train/beta`` and ``train/beta/{gap_mean, gap_std, m0, sigma,
    kept_fraction}``, and through torchmetrics (exact across ranks) ``{train,val}/rewards/{chosen, rejected,
    margins, accuracies}``, ``{train,val}/logps/{chosen, rejected}`` and ``{train,val}/margins/{mean, std}``;
    training metrics cover the optimizer steps since the previous logging step (``Trainer(log_every_n_steps)``),
    validation metrics the whole validation run. Rewards are ``β0·(log π − log π_ref)`` with the base β0.

    ``alpha = 0`` and ``rho = 0`` give plain DPO with a constant β (and the same metrics).

    Args:
        beta: β0, the base β (> 0).
        alpha: α, the strength of the β adaptation (≥ 0).
        rho: ρ, the fraction of pairs filtered out of each micro-batch, in ``[0, 1)``; 0 disables filtering.
        momentum: m, EMA momentum of the margin statistics, in ``[0, 1)``.
        beta_min: lower clamp of β.
        beta_max: upper clamp of β (``None``: none).
        sigma_min: floor of the running margin std, in nats.
        seed: seed of the filtering draws (they depend only on ``seed`` and the step, identical on all ranks).
    """

    def __init__(
        self,
        beta: float = 0.1,
        alpha: float = 0.6,
        rho: float = 0.2,
        momentum: float = 0.9,
        beta_min: float = 1e-3,
        beta_max: float | None = None,
        sigma_min: float = 1e-6,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.controller = BetaDPOController(
            beta=beta,
            alpha=alpha,
            rho=rho,
            momentum=momentum,
            beta_min=beta_min,
            beta_max=beta_max,
            sigma_min=sigma_min,
            seed=seed,
        )
        self.train_metrics = PreferenceMetrics()
        self.val_metrics = PreferenceMetrics()
        self._trainer: pl.Trainer | None = None
        self._module: pl.LightningModule | None = None
        self._last_logged_step = -1

    # ------------------------------------------------------------------ wiring
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "beta_provider"):
            raise MisconfigurationException(
                f"{type(pl_module).__name__} has no `beta_provider` attribute, so it cannot use DynamicBetaCallback. "
                "See `betadpo_lightning.callbacks.protocol` for the small protocol a module must follow."
            )
        module_beta = getattr(pl_module, "beta", None)
        if isinstance(module_beta, float) and module_beta != self.controller.beta:
            rank_zero_warn(
                f"DynamicBetaCallback(beta={self.controller.beta}) and {type(pl_module).__name__}(beta={module_beta}) "
                "differ; the callback's β0 is the one used for training and for the logged rewards."
            )
        pl_module.beta_provider = self
        self._trainer, self._module = trainer, pl_module

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if getattr(pl_module, "beta_provider", None) is self:
            pl_module.beta_provider = None
        self._trainer = self._module = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The metrics are not submodules of the LightningModule, so the strategy does not move them.
        self.train_metrics.to(pl_module.device)
        self.val_metrics.to(pl_module.device)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.val_metrics.to(pl_module.device)
        self.val_metrics.reset()

    # ---------------------------------------------------------------- decision
    def decide(self, margins: Tensor) -> BetaDecision:
        """β, keep-mask and normaliser for the current batch of this rank.

        Must be called once per batch on every rank (it gathers across ranks). In training it steps the controller;
        otherwise (validation, sanity check) it evaluates without changing any state.

        Args:
            margins: this rank's detached DPO margins ``(pc − rc) − (pr − rr)``, shape ``(B,)``.

        Returns:
            The :class:`~betadpo_lightning.callbacks.protocol.BetaDecision` for this rank.
        """
        if self._trainer is None or self._module is None:
            raise RuntimeError("DynamicBetaCallback.decide was called outside a Trainer run (setup has not run).")
        if margins.dim() != 1:
            raise ValueError(f"Expected `margins` of shape (B,), got {tuple(margins.shape)}.")
        gaps, offset = self._gather(margins.detach().float())
        training = self._trainer.training
        result = self.controller.step(gaps) if training else self.controller.evaluate(gaps)
        local = slice(offset, offset + margins.shape[0])
        if training:
            self._log_step(result, batch_size=margins.shape[0])
        return BetaDecision(
            beta=result.beta if result.beta.dim() == 0 else result.beta[local],
            keep=result.keep[local],
            normalizer=result.keep.sum().float() / self._trainer.world_size,
        )

    def _gather(self, margins: Tensor) -> tuple[Tensor, int]:
        """All ranks' margins in rank order, shape ``(N,)``, and the offset of this rank's part."""
        trainer = self._trainer
        assert trainer is not None
        if trainer.world_size == 1:
            return margins, 0
        strategy = trainer.strategy
        size = torch.tensor([margins.shape[0]], device=margins.device)
        sizes = strategy.all_gather(size).flatten().tolist()  # (W,): ranks may hold different numbers of pairs
        padded = margins.new_zeros(max(sizes))
        padded[: margins.shape[0]] = margins
        gathered = strategy.all_gather(padded)  # (W, max_n)
        gaps = torch.cat([gathered[rank, :n] for rank, n in enumerate(sizes)])  # (N,)
        return gaps, sum(sizes[: trainer.global_rank])

    def _log_step(self, result: BetaStep, batch_size: int) -> None:
        module = self._module
        assert module is not None
        module.log("train/beta", result.beta.mean(), on_step=True, on_epoch=False, batch_size=batch_size)
        stats = {f"train/beta/{name}": value for name, value in result.stats.items()}
        module.log_dict(stats, on_step=True, on_epoch=False, batch_size=batch_size)

    # ----------------------------------------------------------------- metrics
    def _update(self, metrics: PreferenceMetrics, outputs: Any) -> None:
        if not isinstance(outputs, dict) or any(key not in outputs for key in STEP_OUTPUT_KEYS):
            got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
            raise MisconfigurationException(
                f"DynamicBetaCallback needs the step to return a dict with {list(STEP_OUTPUT_KEYS)}; got {got}."
            )
        metrics.update(*(outputs[key] for key in STEP_OUTPUT_KEYS), beta=self.controller.beta)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._update(self.train_metrics, outputs)
        step = trainer.global_step
        # Logged exactly when Lightning writes to the loggers: right after the optimizer step that makes
        # `global_step` a multiple of `log_every_n_steps` (the same on every rank, so compute() is collective-safe).
        if step != self._last_logged_step and trainer.log_every_n_steps > 0 and step % trainer.log_every_n_steps == 0:
            self._last_logged_step = step
            values = {f"train/{key}": value for key, value in self.train_metrics.compute().items()}
            pl_module.log_dict(values, on_step=True, on_epoch=False, batch_size=1)
            self.train_metrics.reset()

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update(self.val_metrics, outputs)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.val_metrics.num_batches == 0 and trainer.world_size == 1:
            return
        values = {f"val/{key}": value for key, value in self.val_metrics.compute().items()}
        pl_module.log_dict(values, on_step=False, on_epoch=True, batch_size=1)
        self.val_metrics.reset()

    # ------------------------------------------------------------- checkpoint
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.controller.load_state_dict(state_dict.get("controller", {}))
