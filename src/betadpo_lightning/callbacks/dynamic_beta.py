"""DynamicBetaCallback: a β controller, its cross-rank synchronisation and the preference metrics."""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from betadpo_lightning.core.compose import composition_error
from betadpo_lightning.core.controllers import BetaController, BetaDPOController
from betadpo_lightning.core.types import PairData, PairRequest, check_extras
from betadpo_lightning.distributed import gather_pairs
from betadpo_lightning.models.sharding import close_process_group_at_exit
from betadpo_lightning.training.decision import (
    BetaDecision,
    BetaProvider,
    DynamicBetaHost,
    missing_host_members,
    static_decision,
)

__all__ = ["DynamicBetaCallback"]


class DynamicBetaCallback(Callback):
    r"""A β controller (β-DPO by default) for any LightningModule that follows :class:`DynamicBetaHost`.

    At setup the callback checks the module against the protocol (naming what is missing), the controller's
    requested extras against what the module's pairs can hold, and the controller's declarations against the
    module's loss (:func:`~betadpo_lightning.core.compose.composition_error`); then it installs itself as the
    module's β provider, and restores the previous one at teardown.

    Each training micro-batch, the module asks :meth:`decide` with its pairs and margins; the callback gathers those
    of all ranks (:mod:`~betadpo_lightning.distributed`; ranks may hold different numbers of pairs), steps the
    controller once on the global micro-batch and hands back β, this rank's keep-mask, the global normaliser and
    the controller's statistics. After every optimizer step it calls the controller's ``on_optimizer_step``. When the
    module reported through :meth:`skip_step` that the step was dropped (non-finite values), the controller is put
    back to its state before the step's first micro-batch (``load_state_dict`` of a copy taken then, for any
    controller, also one whose ``step`` updates statistics at once, as β-DPO's per-micro-batch ``M0`` and ``σ``)
    and its ``discard_step`` is called: a skipped step leaves no trace in the controller. The controller's state is
    saved in and restored from checkpoints.

    Evaluation (validation and test) never changes the controller and runs no collective per batch: its loss uses
    the fixed base β0 (``controller.beta``) and keeps every pair. The module logs the metrics (its reporter), with
    β and the controller's statistics (β-DPO: ``gap_mean``, ``gap_std``, ``m0``, ``sigma``, ``kept_fraction``) as
    ``train/beta`` and ``train/beta/<stat>``.

    Args:
        controller: the rule that turns pairs into β and a keep-mask: :class:`BetaDPOController` (the default,
            with its defaults), :class:`ConstantBetaController` (plain DPO with global normalisation),
            :class:`EpsilonBetaController`, or any object following
            :class:`~betadpo_lightning.core.controllers.BetaController`.
    """

    def __init__(self, controller: BetaController | None = None) -> None:
        super().__init__()
        self.controller: BetaController = controller if controller is not None else BetaDPOController()
        self._trainer: pl.Trainer | None = None
        self._previous: BetaProvider | None = None
        self._skip = False
        self._last_step: int | None = None
        self._before_step: dict[str, Any] | None = None  # the controller's state before this optimizer step

    @property
    def beta0(self) -> float:
        """The controller's base β."""
        return self.controller.beta

    @property
    def request(self) -> PairRequest:
        """What the module must put into its pairs: the controller's request."""
        return self.controller.request

    # ------------------------------------------------------------------ wiring
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        name, controller = type(pl_module).__name__, type(self.controller).__name__
        missing = missing_host_members(pl_module)
        if missing:
            raise MisconfigurationException(
                f"{name} cannot use DynamicBetaCallback: it lacks {'; '.join(missing)}. See "
                "`betadpo_lightning.training.decision.DynamicBetaHost` for the protocol."
            )
        host: DynamicBetaHost = pl_module  # type: ignore[assignment]
        try:
            check_extras(self.request.extras, host.pair_extras, controller, name)
        except (KeyError, ValueError) as error:
            raise MisconfigurationException(str(error)) from None
        reason = composition_error(self.controller, host.preference_loss)
        if reason is not None:
            raise MisconfigurationException(reason)
        previous = host.beta_provider if host.beta_provider is not self else self._previous
        if previous is not None and previous.beta0 != self.controller.beta:
            rank_zero_warn(
                f"{controller}(beta={self.controller.beta}) and {name}'s β ({previous.beta0}) differ; the "
                "controller's β0 is the one used for training, evaluation and the logged rewards."
            )
        self._previous = previous
        host.beta_provider = self
        self._trainer = trainer
        close_process_group_at_exit()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if getattr(pl_module, "beta_provider", None) is self and self._previous is not None:
            pl_module.beta_provider = self._previous
        self._trainer = None

    # ---------------------------------------------------------------- decision
    def decide(self, pairs: PairData, margins: Tensor, training: bool) -> BetaDecision:
        """β, keep-mask, normaliser and statistics for this rank's current batch.

        In training it must be called once per batch on every rank (it gathers across ranks) and steps the
        controller; in evaluation it returns the fixed-β0 decision and communicates nothing.

        Args:
            pairs: this rank's pairs, ``(B,)`` fields, with the extras of :attr:`request`.
            margins: their margins, ``(B,)``.
            training: whether this is a training batch.

        Returns:
            The :class:`~betadpo_lightning.training.decision.BetaDecision` for this rank.
        """
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError("DynamicBetaCallback.decide was called outside a Trainer run (setup has not run).")
        if not training:
            return static_decision(len(pairs), self.beta0, margins.device)
        pairs = pairs.detach().select(self.request.extras)
        everyone, gaps, offset, ranks = gather_pairs(trainer.strategy, pairs, margins.detach())
        values = [gaps, *everyone.tensors().values()]
        if not all(bool(torch.isfinite(value).all()) for value in values):
            # A poisoned micro-batch (the module's guard skips or stops its step) never reaches the controller.
            return static_decision(len(pairs), self.beta0, margins.device)
        if self._before_step is None:  # the step's first micro-batch that reaches the controller
            self._before_step = copy.deepcopy(self.controller.state_dict())
        result = self.controller.step(gaps, everyone)
        local = slice(offset, offset + len(pairs))
        return BetaDecision(
            beta=result.beta if result.beta.dim() == 0 else result.beta[local],
            keep=result.keep[local],
            normalizer=result.keep.sum().float() / ranks,
            stats=result.stats,
        )

    def skip_step(self) -> None:
        """The module drops the current optimizer step: the controller forgets all of it instead of committing it."""
        self._skip = True

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step, self._skip, self._before_step = trainer.global_step, False, None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._last_step:  # accumulating: no optimizer step after this batch
            return
        self._last_step = trainer.global_step
        if self._skip:
            if self._before_step is not None:  # undo what the step's micro-batches changed
                self.controller.load_state_dict(self._before_step)
            self.controller.discard_step()
        else:
            self.controller.on_optimizer_step()
        self._skip, self._before_step = False, None

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
