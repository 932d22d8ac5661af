"""DynamicBetaCallback: a β controller, its cross-rank synchronisation and the preference metrics."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.optim import Optimizer
from typing_extensions import override

from betadpo_lightning.callbacks.gather import gather_pairs
from betadpo_lightning.core.controllers import BetaController, BetaDPOController
from betadpo_lightning.core.losses import pair_margins
from betadpo_lightning.core.types import PairData, check_extras
from betadpo_lightning.models.sharding import close_process_group_at_exit
from betadpo_lightning.training.decision import BetaDecision, static_decision
from betadpo_lightning.training.reporting import PreferenceReporter, evaluation_stage

__all__ = ["DynamicBetaCallback"]


class DynamicBetaCallback(Callback):
    r"""A β controller (β-DPO by default) for any LightningModule that follows :mod:`~.callbacks.protocol`.

    Inside each training step the module calls :meth:`decide` with its pairs; the callback gathers the pairs of all
    ranks through the Lightning strategy (ranks may hold different numbers of pairs), steps the controller once on
    the global micro-batch and hands back β, this rank's keep-mask and the global normaliser. After the last
    micro-batch of every optimizer step it calls the controller's ``on_optimizer_step``. The controller's state is
    saved in and restored from checkpoints.

    Evaluation (validation and test) never changes the controller and runs no collective per batch: its loss uses
    the fixed base β0 (``controller.beta``) and keeps every pair, so ``val/loss`` and ``test/loss`` do not depend on
    how the evaluation is batched or on the number of ranks.

    Logged (window means, see :mod:`~.callbacks.reporting`): ``train/beta`` and ``train/beta/<stat>`` for every
    statistic the controller reports (β-DPO: ``gap_mean``, ``gap_std``, ``m0``, ``sigma``, ``kept_fraction``), and
    through torchmetrics (exact across ranks) ``{train,val,test}/rewards/{chosen, rejected, margins, accuracies}``,
    ``{train,val,test}/logps/{chosen, rejected}`` and ``{train,val,test}/margins/{mean, std}``, with rewards
    ``β0·(log π − log π_ref)``.

    Args:
        controller: the rule that turns pairs into β and a keep-mask: :class:`BetaDPOController` (the default,
            with its defaults), :class:`ConstantBetaController` (plain DPO with these metrics), or any object
            following :class:`~betadpo_lightning.core.controllers.BetaController`.
    """

    def __init__(self, controller: BetaController | None = None) -> None:
        super().__init__()
        self.controller: BetaController = controller if controller is not None else BetaDPOController()
        self.reporter = PreferenceReporter()
        self._trainer: pl.Trainer | None = None

    @property
    def required_extras(self) -> frozenset[str]:
        """The extra groups the controller reads, which the module must put into its pairs."""
        return frozenset(getattr(self.controller, "requires", frozenset()))

    @property
    def pair_settings(self) -> dict[str, float]:
        """Settings the module needs to compute the required extras (``epsilon`` of the perturbed log-probs)."""
        epsilon = getattr(self.controller, "epsilon", None)
        return {"epsilon": float(epsilon)} if epsilon is not None else {}

    # ------------------------------------------------------------------ wiring
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        name = type(pl_module).__name__
        if not hasattr(pl_module, "beta_provider"):
            raise MisconfigurationException(
                f"{name} has no `beta_provider` attribute, so it cannot use DynamicBetaCallback. "
                "See `betadpo_lightning.training.decision` for the small protocol a module must follow."
            )
        controller = type(self.controller).__name__
        try:
            check_extras(self.required_extras, getattr(pl_module, "pair_extras", frozenset()), controller, name)
        except (KeyError, ValueError) as error:
            raise MisconfigurationException(str(error)) from None
        _check_composition(self.controller, pl_module)
        module_beta = getattr(pl_module, "beta", None)
        if isinstance(module_beta, float) and module_beta != self.controller.beta:
            rank_zero_warn(
                f"{controller}(beta={self.controller.beta}) and {name}(beta={module_beta}) differ; the controller's "
                "β0 is the one used for training, validation and the logged rewards."
            )
        pl_module.beta_provider = self
        self._trainer = trainer
        close_process_group_at_exit()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if getattr(pl_module, "beta_provider", None) is self:
            pl_module.beta_provider = None
        self._trainer = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reporter.to(pl_module.device)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reporter.on_train_start(trainer)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reporter.to(pl_module.device).reset_evaluation("val")

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reporter.to(pl_module.device).reset_evaluation("test")

    # ---------------------------------------------------------------- decision
    def decide(self, pairs: PairData) -> BetaDecision:
        """β, keep-mask and normaliser for this rank's current batch; records the batch's metrics.

        In training it must be called once per batch on every rank (it gathers across ranks) and steps the
        controller; in evaluation (validation, its sanity check, test) it returns the fixed-β0 decision and
        communicates nothing.

        Args:
            pairs: this rank's pairs, ``(B,)`` fields, with the extras in :attr:`required_extras`.

        Returns:
            The :class:`~betadpo_lightning.training.decision.BetaDecision` for this rank.
        """
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError("DynamicBetaCallback.decide was called outside a Trainer run (setup has not run).")
        pairs = pairs.detach()
        beta0 = self.controller.beta
        if not trainer.training:  # validation, its sanity check, or test
            self.reporter.update_pairs(evaluation_stage(trainer), pairs, beta0)
            return static_decision(pairs, beta0)
        required = self.required_extras
        everyone, offset, ranks = gather_pairs(trainer.strategy, pairs.select(required))
        if not all(bool(torch.isfinite(value).all()) for value in everyone.tensors().values()):
            # A poisoned micro-batch (the module's guard skips or stops its step) never reaches the controller.
            self.reporter.update_scalars({"beta": torch.tensor(beta0)})
            return static_decision(pairs, beta0)
        result = self.controller.step(pair_margins(everyone), everyone if required else None)
        local = slice(offset, offset + len(pairs))
        self.reporter.update_pairs("train", pairs, beta0)
        self.reporter.update_scalars({"beta": result.beta.mean()})
        self.reporter.update_scalars({f"beta/{name}": value for name, value in result.stats.items()})
        return BetaDecision(
            beta=result.beta if result.beta.dim() == 0 else result.beta[local],
            keep=result.keep[local],
            normalizer=result.keep.sum().float() / ranks,
        )

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        if getattr(pl_module, "skipping_step", False):  # the module's guard skips this step: so does the controller
            discard = getattr(self.controller, "discard_step", None)
            if discard is not None:
                discard()
            return
        self.controller.on_optimizer_step()

    # ----------------------------------------------------------------- logging
    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.reporter.log_train_if_due(trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reporter.log_evaluation(trainer, pl_module, "val")

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reporter.log_evaluation(trainer, pl_module, "test")

    # ------------------------------------------------------------- checkpoint
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict(), "controller_class": type(self.controller).__name__}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("controller_class")
        if saved is not None and saved != type(self.controller).__name__:
            raise MisconfigurationException(
                f"The checkpoint holds the state of a {saved}, but this run's controller is a "
                f"{type(self.controller).__name__}; resume with the same controller."
            )
        state = state_dict.get("controller", {})
        saved, current = state.get("settings"), getattr(self.controller, "settings", lambda: None)()
        if isinstance(saved, dict) and isinstance(current, dict):
            changed = {k: (saved[k], current[k]) for k in current if k in saved and saved[k] != current[k]}
            if changed:
                details = ", ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in changed.items())
                rank_zero_warn(
                    f"Resuming {type(self.controller).__name__} with other settings ({details}); the configured "
                    "values are used, so the run does not continue exactly as the checkpointed one would have."
                )
        self.controller.load_state_dict(state)


def _check_composition(controller: Any, module: pl.LightningModule) -> None:
    """Refuse a controller with a module setting it is meaningless for (optional module attributes)."""
    name, module_name = type(controller).__name__, type(module).__name__
    if getattr(controller, "reference_margins", False) and getattr(module, "reference_free", False):
        raise MisconfigurationException(
            f"{name} adapts β from margins relative to the reference ((pc − rc) − (pr − rr)), but {module_name} "
            "trains with reference-free margins (pc − pr: raw log-probability differences of tens of nats), on "
            "which its statistics and perturbations lose their meaning. Train with a reference, or use "
            "ConstantBetaController."
        )
    supported, loss = getattr(controller, "supported_losses", None), getattr(module, "loss_type", None)
    if supported is not None and loss is not None and loss not in supported:
        raise MisconfigurationException(
            f"{name} supports loss_type in {sorted(supported)}, not {loss!r}: its per-pair β perturbs the β of a "
            "logistic preference link (the policy for β/(1 ± ε) is the ε-perturbed logits only for those losses)."
        )
