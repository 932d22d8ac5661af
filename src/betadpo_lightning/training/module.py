"""PreferenceModule: a trainable policy and a reference, trained with a loss of the DPO family."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor
from typing_extensions import override

from betadpo_lightning.core.losses import PreferenceLoss, resolve_loss
from betadpo_lightning.core.types import EXTRAS, PairData, PairRequest, check_extras
from betadpo_lightning.models.building import DType, LoraOptions
from betadpo_lightning.models.pair_forward import PairForward, ScoringModels
from betadpo_lightning.models.quantization import Quantization
from betadpo_lightning.models.reference import FrozenReference, NoReference, ReferenceProvider
from betadpo_lightning.models.scoring import response_targets
from betadpo_lightning.models.sharding import close_process_group_at_exit
from betadpo_lightning.training.checks import check_batch, check_token_ids, check_weights_finite
from betadpo_lightning.training.decision import BetaProvider, StaticBeta
from betadpo_lightning.training.nonfinite import NonFiniteGuard, NonFinitePolicy
from betadpo_lightning.training.optimization import configure_policy_optimization
from betadpo_lightning.training.policy_and_reference import PolicyAndReference
from betadpo_lightning.training.reporting import PreferenceReporter

__all__ = ["PreferenceModule"]

HeadOption = Literal["auto", "full"]


class PreferenceModule(PolicyAndReference):
    """A trainable policy and a reference, one concatenated forward over the ``(2B, T)`` batch per model.

    The reference comes from a :mod:`~betadpo_lightning.models.reference` provider: a frozen copy (default), the policy
    with its adapters disabled, precomputed values carried in the batch, or none. A separate reference model is the
    submodule ``reference_model``: it follows device moves and precision plugins, is always in eval mode, has no
    gradient, is not in the optimizer and is left out of checkpoints (its weight fingerprint is saved instead, so a
    resume against a different reference fails with a message that says what differs).

    The policy trains in train mode whatever its source (``from_pretrained`` returns eval-mode models), so
    ``gradient_checkpointing`` and ``dropout`` take effect.

    One step, the same for every method: the forward gives the pairs (:class:`~betadpo_lightning.core.types.PairData`),
    the loss component gives their margins (computed once), the β provider decides β, the kept pairs and the
    normaliser (:class:`~betadpo_lightning.training.decision.StaticBeta` by default, or the controller of
    :class:`~betadpo_lightning.callbacks.DynamicBetaCallback`), the loss component gives the per-pair losses, and
    the one :class:`~betadpo_lightning.training.reporting.PreferenceReporter` records the metrics and logs them at
    Lightning's logging steps. Validation and test (``trainer.test``, ``cli.py test``) compute the same loss and
    metrics with the fixed β0, every pair kept, under ``val/`` and ``test/``: exact whatever the batch size and the
    number of ranks (the samples a distributed sampler repeats are flagged ``is_padding`` and left out, and pairs
    with a non-finite margin or no response token are counted in ``{stage}/nonfinite_pairs``).

    Args:
        model_name_or_path: hub name or local directory of the policy.
        model_config: instead of a checkpoint, a ``transformers`` config dict with ``model_type`` for a randomly
            initialised model (tests, the quickstart); ``vocab_size`` and special token ids default to the
            datamodule's tokenizer, and the resolved values are saved in the hyperparameters.
        reference: where reference log-probs come from (``None``: a frozen copy of the initial policy when the loss
            needs a reference or reads the reference's entropy, else none).
        loss: the loss component (:class:`~betadpo_lightning.core.losses.PreferenceLoss`, by ``class_path`` with
            ``init_args`` in YAML) or its short name (``sigmoid``, ``ipo``, ``simpo``, ...; see
            :data:`~betadpo_lightning.core.losses.LOSSES`). It carries its own hyperparameters and declares whether it
            needs a reference and length-averaged log-probabilities.
        beta: β0, the β of the loss (a dynamic-β callback's controller sets β during training; its β0 should equal
            this).
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
        loss: PreferenceLoss | str = "sigmoid",
        beta: float = 0.1,
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
        if (model_name_or_path is None) == (model_config is None):
            raise ValueError("Give exactly one of `model_name_or_path` and `model_config`.")
        if quantization is not None and (lora is None or model_name_or_path is None):
            raise ValueError(
                f"quantization={quantization!r} trains LoRA adapters on a base loaded from a checkpoint: set `lora` "
                "and `model_name_or_path`."
            )
        if head not in ("auto", "full"):
            raise ValueError(f"Expected `head` in ('auto', 'full'), got {head!r}.")
        self.preference_loss = resolve_loss(loss)
        if isinstance(reference, Mapping):  # from a checkpoint's hparams (plain data)
            reference = ReferenceProvider.from_config(reference)
        self.reference_provider = reference if reference is not None else self._default_reference()
        self.static_beta = StaticBeta(beta)
        self.beta_provider: BetaProvider = self.static_beta
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "reference", "loss"])
        self.hparams["reference"] = self.reference_provider.config()  # plain data: checkpoints load weights-only
        self.hparams["loss"] = self.preference_loss.config()
        check_extras(self.preference_loss.requires, self.pair_extras, repr(self.preference_loss), self._producer)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self._guard = NonFiniteGuard(on_nonfinite, max_skipped_steps)
        self._skipping_step = False
        self._init_models()
        self.reporter = PreferenceReporter()
        self._pair_forward = PairForward(head)

    def _default_reference(self) -> ReferenceProvider:
        loss = self.preference_loss
        wanted = loss.needs_reference or bool(loss.requires & FrozenReference.provides)
        return FrozenReference() if wanted else NoReference()

    @property
    def _producer(self) -> str:
        return f"PreferenceModule with {self.reference_provider!r}"

    @property
    def beta(self) -> float:
        """β0, the base β of this module's loss."""
        return self.static_beta.beta0

    @property
    def pair_extras(self) -> frozenset[str]:
        """Extra groups this module can put into its pairs.

        Token counts, the policy's WPO weights, what the reference provider offers, and ε-perturbed log-probs when
        a reference model runs (they need its logits).
        """
        perturbed = {"perturbed_logps"} if self.reference_provider.has_model else set()
        own = {"lengths", "wpo"} & set(EXTRAS)
        return frozenset(own) | self.reference_provider.provides | perturbed

    def pair_request(self) -> PairRequest:
        """What the forward computes: what the loss reads and what the β provider asks for."""
        return PairRequest(self.preference_loss.requires) | self.beta_provider.request

    @property
    def reference_extras(self) -> frozenset[str]:
        """The extra groups the reference supplies for this run."""
        return self.pair_request().extras & self.reference_provider.provides

    @override
    def setup(self, stage: str) -> None:
        close_process_group_at_exit()
        self.static_beta.strategy = self.trainer.strategy  # the training loss's mean counts every rank's pairs

    @override
    def on_fit_start(self) -> None:
        if self.reference_model is not None:  # the reference is in eval mode on purpose: silence exactly that
            count = sum(1 for _ in self.reference_model.modules())
            warnings.filterwarnings(
                "ignore", message=rf"Found {count} module\(s\) in eval mode at the start", category=PossibleUserWarning
            )
        check_token_ids(self)

    # -------------------------------------------------------------------- step
    def forward_pairs(self, batch: dict[str, Tensor], request: PairRequest | None = None) -> PairData:
        """Policy (with grad) and reference (without) values of a ``(2B, T)`` batch as ``B`` pairs.

        Args:
            batch: the preference batch (``input_ids``, ``attention_mask``, ``labels`` ``(2B, T)``; ``pair_index``
                ``(B,)``; precomputed reference fields when the provider reads them).
            request: the extras to compute beyond ``lengths`` (always present); ``None``: :meth:`pair_request`.

        Returns:
            The pairs, ``(B,)`` fields, summed or length-averaged as the loss declares.
        """
        assert self.policy is not None
        request = self.pair_request() if request is None else request
        models = ScoringModels(self.policy, self.reference, self.reference_provider)
        average = self.preference_loss.average_logps
        return self._pair_forward(models, batch, average, request.extras, request.epsilon)

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        """One batch: pairs → margins (once) → β decision → per-pair loss → reduction → metrics."""
        check_batch(batch)
        pairs = self.forward_pairs(batch)
        margins = self.preference_loss.margins(pairs)  # (B,)
        has_response = response_targets(batch).counts() > 0  # (2B,), padded or packed batch
        finite = torch.isfinite(margins) & has_response[: len(pairs)] & has_response[len(pairs) :]
        if stage == "train":
            self._guard.observe(finite, pairs.pair_index, "margin (or a row without response token)")
        else:
            counted = ~batch.get("is_padding", torch.zeros_like(finite))  # (B,): not a repeat that evens the ranks
            self._log_nonfinite(stage, (~finite & counted).sum(), len(pairs))
            pairs, margins = pairs.subset(finite & counted), margins[finite & counted]
        decision = self.beta_provider.decide(pairs.detach(), margins.detach(), training=stage == "train")
        per_pair = self.preference_loss(pairs, decision.beta, margins)  # (B,)
        loss = decision.reduce(per_pair)
        if stage == "train":
            self._guard.observe(torch.isfinite(loss).reshape(1), None, "loss")
        beta0 = self.beta_provider.beta0
        self.reporter.record(stage, pairs, margins, beta0, decision, loss if stage == "train" else per_pair)
        return loss

    def _log_nonfinite(self, stage: str, count: Tensor, batch_size: int) -> None:
        """Count the pairs an evaluation leaves out for a non-finite margin (summed over the run and the ranks)."""
        options = {"on_step": False, "on_epoch": True, "reduce_fx": "sum", "sync_dist": True}
        self.log(f"{stage}/nonfinite_pairs", count.float(), batch_size=batch_size, **options)

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    # ----------------------------------------------------------------- logging
    @override
    def on_train_start(self) -> None:
        self.reporter.on_train_start(self.trainer)

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        skipped = {"train/skipped_steps": torch.tensor(float(self._guard.skipped))}
        self.reporter.log_train_if_due(self.trainer, self, skipped)

    @override
    def on_validation_start(self) -> None:
        self.reporter.reset_evaluation("val")

    @override
    def on_validation_epoch_end(self) -> None:
        self.reporter.log_evaluation(self.trainer, self, "val")

    @override
    def on_test_start(self) -> None:
        self.reporter.reset_evaluation("test")

    @override
    def on_test_epoch_end(self) -> None:
        self.reporter.log_evaluation(self.trainer, self, "test")

    # --------------------------------------------------------------- optimizer
    @override
    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Callable[[], Any] | None = None
    ) -> None:
        def guarded() -> Any:  # after the step's last backward, before hooks, clipping and the update
            result = optimizer_closure() if optimizer_closure is not None else None
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # fp16: the scaler skips overflow
            params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
            strategy, step = self.trainer.strategy, self.global_step
            self._skipping_step = self._guard.check_step(strategy, params, step, scaler is None)
            if self._skipping_step:
                optimizer.zero_grad(set_to_none=True)  # no gradient: the optimizer updates nothing
                self.beta_provider.skip_step()  # the documented hook: the β provider commits nothing of this step
            return result

        optimizer.step(closure=guarded)

    @override
    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if not self._skipping_step:  # a skipped optimizer step does not advance the schedule either
            super().lr_scheduler_step(scheduler, metric)

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        return configure_policy_optimization(self, self.optimizer_factory, self.scheduler_factory)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_weights_finite(self.policy, self.trainer.strategy if self._trainer is not None else None)
        super().on_save_checkpoint(checkpoint)
