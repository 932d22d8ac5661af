"""PreferenceModule: a trainable policy and a reference, trained with a loss of the DPO family."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from typing_extensions import override

from betadpo_lightning.core.losses import PAIR_LOSSES, mallows_weight, pair_margins
from betadpo_lightning.core.types import PairData, check_extras
from betadpo_lightning.models.building import (
    DType,
    LoraOptions,
)
from betadpo_lightning.models.pair_forward import ModelPair, PairForward
from betadpo_lightning.models.quantization import Quantization
from betadpo_lightning.models.reference import FrozenReference, NoReference, ReferenceProvider
from betadpo_lightning.models.sharding import close_process_group_at_exit
from betadpo_lightning.training.checks import check_batch, check_weights_finite
from betadpo_lightning.training.decision import BetaProvider, static_decision
from betadpo_lightning.training.evaluation import PreferenceEvaluation
from betadpo_lightning.training.metrics import MeanOfSums
from betadpo_lightning.training.nonfinite import NonFiniteGuard, NonFinitePolicy
from betadpo_lightning.training.optimization import build_optimization
from betadpo_lightning.training.policy_and_reference import PolicyAndReference
from betadpo_lightning.training.reporting import PreferenceReporter

__all__ = ["PreferenceModule"]

LossType = Literal["sigmoid", "robust", "ipo", "hinge", "mallows_theta", "mallows_theta_ipo", "mallows_phi"]
HeadOption = Literal["auto", "full"]


class PreferenceModule(PreferenceEvaluation, PolicyAndReference):
    """A trainable policy and a reference, one concatenated forward over the ``(2B, T)`` batch per model.

    The reference comes from a :mod:`~betadpo_lightning.models.reference` provider: a frozen copy (default), the policy
    with its adapters disabled, precomputed values carried in the batch, or none. A separate reference model is the
    submodule ``reference_model``: it follows device moves and precision plugins, is always in eval mode, has no
    gradient, is not in the optimizer and is left out of checkpoints (its weight fingerprint is saved instead, so a
    resume against a different reference fails with a message that says what differs).

    The policy trains in train mode whatever its source (``from_pretrained`` returns eval-mode models), so
    ``gradient_checkpointing`` and ``dropout`` take effect.

    Without a β provider (see :mod:`betadpo_lightning.training.decision`) it trains with the fixed ``beta`` and
    logs the preference metrics itself; with :class:`~betadpo_lightning.callbacks.DynamicBetaCallback` the
    callback's controller decides β and the pairs kept, and the callback logs those metrics. ``train/loss`` is
    always logged here, as a mean over the logging window. Validation and test (``trainer.test``, ``cli.py test``)
    compute the same loss and metrics with the fixed β0, under ``val/`` and ``test/``
    (:mod:`~betadpo_lightning.training.evaluation`).

    Args:
        model_name_or_path: hub name or local directory of the policy.
        model_config: instead of a checkpoint, a ``transformers`` config dict with ``model_type`` for a randomly
            initialised model (tests, the quickstart); ``vocab_size`` and special token ids default to the
            datamodule's tokenizer, and the resolved values are saved in the hyperparameters.
        reference: where reference log-probs come from (``None``: a frozen copy of the initial policy).
        loss_type: ``sigmoid`` (DPO / cDPO), ``robust``, ``ipo``, ``hinge``, or MallowsPO: ``mallows_theta``,
            ``mallows_theta_ipo`` (IPO style) and ``mallows_phi`` (:mod:`betadpo_lightning.core.losses.mallows`), which
            read the reference's entropy.
        beta: β of the loss (with a dynamic-β callback its controller's β0 is used, and should equal this).
        label_smoothing: ε of cDPO (``sigmoid``, ``mallows_theta``, ``mallows_phi``) or robust DPO; must be 0 for
            ``ipo``, ``mallows_theta_ipo`` and ``hinge``.
        reference_free: margins ``pc − pr`` without the reference log-probabilities (the reference still supplies
            MallowsPO's entropy; the released MallowsPO runs train so).
        home_advantage: γ, subtracted from every margin before the loss (MallowsPO's home advantage).
        dispersion_scale: c of MallowsPO's weight ``w(x) = −c·log Ĥ(x)``.
        average_logps: use length-averaged log-probs; ``None`` picks the loss's convention (IPO: yes, others: no).
        dtype: dtype the models are loaded in (``None``: float32; use ``precision`` for mixed precision).
        attn_implementation: ``transformers`` attention kernel (``sdpa``, ``eager``, ``flash_attention_2``).
        trust_remote_code: allow custom model code from the hub.
        gradient_checkpointing: recompute the policy's activations in the backward pass.
        dropout: keep the models' dropout; by default every dropout is disabled in both models.
        lora: ``peft.LoraConfig`` arguments to train LoRA adapters instead of the full policy (``None``: full). A LoRA
            policy loaded from ``model_name_or_path`` checkpoints only its adapters.
        quantization: load the policy's base in ``"4bit"`` or ``"8bit"`` (bitsandbytes) and train LoRA adapters on
            it (QLoRA); needs ``lora`` and ``model_name_or_path``.
        head: ``auto`` projects only the positions that predict a response token, chunk by chunk in float32
            (:mod:`~betadpo_lightning.models.scoring`), for the models it supports, and full logits otherwise; ``full``
            always computes the full ``(2B, T, V)`` logits.
        optimizer: optimizer factory over the policy's trainable parameters (``None``: AdamW, lr 1e-6, no decay).
        scheduler: LR scheduler factory, stepped every optimizer step (``None``: linear warmup over the first
            10% of the steps, then constant).
        on_nonfinite: what a non-finite margin, loss or gradient does to its optimizer step: ``raise`` (naming the
            global step, the pairs' dataset indices and the rank) or ``skip`` (no optimizer or scheduler step;
            counted in ``train/skipped_steps``). Decided before every optimizer step by all ranks together
            (:mod:`~betadpo_lightning.training.nonfinite`); a checkpoint is never written with non-finite weights.
        max_skipped_steps: with ``skip``, how many skipped steps in a row stop training with an error.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        reference: ReferenceProvider | None = None,
        loss_type: LossType = "sigmoid",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        reference_free: bool = False,
        home_advantage: float = 0.0,
        dispersion_scale: float = 0.29,
        average_logps: bool | None = None,
        dtype: DType | None = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
        dropout: bool = False,
        lora: LoraOptions | None = None,
        quantization: Quantization | None = None,
        head: HeadOption = "auto",
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        on_nonfinite: NonFinitePolicy = "raise",
        max_skipped_steps: int = 10,
    ) -> None:
        super().__init__()
        if loss_type not in PAIR_LOSSES:
            raise ValueError(f"Expected `loss_type` in {sorted(PAIR_LOSSES)}, got {loss_type!r}.")
        if (model_name_or_path is None) == (model_config is None):
            raise ValueError("Give exactly one of `model_name_or_path` and `model_config`.")
        if not beta > 0:
            raise ValueError(f"Expected `beta` > 0, got {beta}.")
        if quantization is not None and (lora is None or model_name_or_path is None):
            raise ValueError(
                f"quantization={quantization!r} trains LoRA adapters on a base loaded from a checkpoint: set `lora` "
                "and `model_name_or_path`."
            )
        if head not in ("auto", "full"):
            raise ValueError(f"Expected `head` in ('auto', 'full'), got {head!r}.")
        self._loss = PAIR_LOSSES[loss_type]
        self._loss.fn(torch.zeros(1), beta, label_smoothing, torch.ones(1))  # validates label_smoothing now
        if isinstance(reference, Mapping):  # from a checkpoint's hparams (plain data)
            reference = ReferenceProvider.from_config(reference)
        self.reference_provider = reference if reference is not None else FrozenReference()
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "reference"])
        self.hparams["reference"] = self.reference_provider.config()  # plain data: checkpoints load weights-only
        self.beta, self.label_smoothing = float(beta), float(label_smoothing)
        self.loss_type, self.home_advantage, self.dispersion_scale = loss_type, float(home_advantage), dispersion_scale
        if not dispersion_scale > 0:
            raise ValueError(f"Expected `dispersion_scale` > 0, got {dispersion_scale}.")
        check_extras(self._loss.requires, self.pair_extras, f"loss_type={loss_type!r}", repr(self.reference_provider))
        self.average_logps = self._loss.average_logps if average_logps is None else average_logps
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self._guard = NonFiniteGuard(on_nonfinite, max_skipped_steps)
        self.skipping_step = False
        self._init_models()
        self.beta_provider: BetaProvider | None = None
        self.reporter = PreferenceReporter()
        self.eval_loss = MeanOfSums()  # per-pair mean over the epoch and every rank, exact (see `_step`)
        self._pair_forward = PairForward(head)

    @property
    def pair_extras(self) -> frozenset[str]:
        """Extra groups this module can put into its pairs.

        Token counts, what the reference provider offers, and ε-perturbed log-probs when a reference model runs
        (they need its logits).
        """
        perturbed = {"perturbed_logps"} if self.reference_provider.has_model else set()
        return frozenset({"lengths"}) | self.reference_provider.provides | perturbed

    @property
    def reference_free(self) -> bool:
        """Whether the margins ignore the reference log-probabilities (``reference_free``, or ``NoReference``)."""
        return bool(self.hparams.reference_free) or isinstance(self.reference_provider, NoReference)

    @override
    def setup(self, stage: str) -> None:
        close_process_group_at_exit()

    @override
    def on_fit_start(self) -> None:
        self.reporter.to(self.device)
        if self.reference_model is not None:  # the reference is in eval mode on purpose: silence exactly that
            count = sum(1 for _ in self.reference_model.modules())
            warnings.filterwarnings(
                "ignore", message=rf"Found {count} module\(s\) in eval mode at the start", category=PossibleUserWarning
            )
        self._check_token_ids()

    def _check_token_ids(self) -> None:
        """Once per fit: every token id of the data fits the policy's and the reference's embeddings.

        Needs a datamodule with a ``token_id_beyond(vocab_size)`` method, such as
        :class:`~betadpo_lightning.data.PreferenceDataModule`.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        check = getattr(datamodule, "token_id_beyond", None)
        if check is None:
            return
        for name, model in (("policy", self.policy), ("reference model", self.reference_model)):
            if model is None:
                continue
            rows = int(model.get_input_embeddings().weight.shape[0])
            found = check(rows)
            if found is not None:
                tokenizer = getattr(datamodule, "tokenizer", None)
                size = f" of {len(tokenizer)} tokens" if tokenizer is not None else ""
                raise ValueError(
                    f"{found} is outside the vocabulary of the {name}: its input embedding has {rows} rows, but the "
                    f"data was tokenized with a tokenizer{size}; use the model's own tokenizer or resize the "
                    "embeddings."
                )

    # -------------------------------------------------------------------- step
    def _wanted_extras(self) -> frozenset[str]:
        """The extra groups the loss and the β provider's controller require."""
        provider = self.beta_provider
        return self._loss.requires | (provider.required_extras if provider is not None else frozenset())

    def _use_head(self, *models: nn.Module) -> bool:
        return self._pair_forward.use_head(*models)

    def forward_pairs(
        self, batch: dict[str, Tensor], extras: frozenset[str] = frozenset(), epsilon: float | None = None
    ) -> PairData:
        """Policy (with grad) and reference (without) values of a ``(2B, T)`` batch as ``B`` pairs.

        Args:
            batch: the preference batch (``input_ids``, ``attention_mask``, ``labels`` ``(2B, T)``; ``pair_index``
                ``(B,)``; precomputed reference fields when the provider reads them).
            extras: extra groups to compute beyond ``lengths`` (always present).
            epsilon: ε of the ``perturbed_logps`` extra.

        Returns:
            The pairs, ``(B,)`` fields.
        """
        assert self.policy is not None
        models = ModelPair(self.policy, self.reference, self.reference_provider)
        return self._pair_forward(models, batch, self.average_logps, extras, epsilon)

    def _step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        check_batch(batch)
        provider = self.beta_provider
        settings = getattr(provider, "pair_settings", {}) if provider is not None else {}
        pairs = self.forward_pairs(batch, self._wanted_extras(), settings.get("epsilon"))
        margins = pair_margins(pairs, self.reference_free)  # (B,)
        has_response = (batch["labels"][:, 1:] != -100).any(-1)  # (2B,)
        finite = torch.isfinite(margins) & has_response[: len(pairs)] & has_response[len(pairs) :]
        if stage == "train":
            self._guard.observe(finite, pairs.pair_index, "margin (or a row without response token)")
        else:
            pairs, margins = self._evaluated_pairs(batch, pairs, margins, finite, stage)
        if provider is not None:
            decision = provider.decide(pairs.detach())
        else:
            decision = static_decision(pairs, self.beta)
            self.reporter.update_pairs(stage, pairs, self.beta)
        weight = None
        if "reference_entropy" in self._loss.requires:  # MallowsPO's dispersion weight, from the reference
            weight = mallows_weight(
                pairs.reference_chosen_entropy, pairs.reference_rejected_entropy, self.dispersion_scale
            )
        per_pair = self._loss.fn(margins - self.home_advantage, decision.beta, self.label_smoothing, weight)
        loss = decision.reduce(per_pair)
        if stage == "train":
            self._guard.observe(torch.isfinite(loss).reshape(1), None, "loss")
            self.reporter.update_scalars({"loss": loss})
        else:
            self._log_evaluation_loss(per_pair[decision.keep], stage)
        return {"loss": loss}

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "train")

    # ----------------------------------------------------------------- logging
    @override
    def on_train_start(self) -> None:
        self.reporter.on_train_start(self.trainer)

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.reporter.log_train_if_due(self.trainer, self, prog_bar=("loss",), pairs=self.beta_provider is None):
            self.log("train/skipped_steps", float(self._guard.skipped), on_step=True, on_epoch=False, batch_size=1)

    # --------------------------------------------------------------- optimizer
    @override
    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Callable[[], Any] | None = None
    ) -> None:
        def guarded() -> Any:  # after the step's last backward, before hooks, clipping and the update
            result = optimizer_closure() if optimizer_closure is not None else None
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # fp16: the scaler skips overflow
            params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
            self.skipping_step = self._guard.check_step(self.trainer.strategy, params, self.global_step, scaler is None)
            if self.skipping_step:
                optimizer.zero_grad(set_to_none=True)  # no gradient: the optimizer updates nothing
            return result

        optimizer.step(closure=guarded)

    @override
    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if not self.skipping_step:  # a skipped optimizer step does not advance the schedule either
            super().lr_scheduler_step(scheduler, metric)

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        if self.policy is None:
            raise RuntimeError("`configure_model()` must run before `configure_optimizers()`.")
        known = self.scheduler_factory is None and self._trainer is not None  # only the default schedule needs it
        total = self.trainer.estimated_stepping_batches if known else float("inf")
        params = [p for p in self.policy.parameters() if p.requires_grad]
        return build_optimization(params, self.optimizer_factory, self.scheduler_factory, total)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_weights_finite(self.policy, self.trainer.strategy if self._trainer is not None else None)
        super().on_save_checkpoint(checkpoint)
