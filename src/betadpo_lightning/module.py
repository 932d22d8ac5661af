"""PreferenceModule: a trainable policy and a reference, trained with a loss of the DPO family."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from typing_extensions import override

from betadpo_lightning.callbacks.protocol import BetaProvider, static_decision
from betadpo_lightning.callbacks.reporting import PreferenceReporter
from betadpo_lightning.checkpointing import ReferenceCheckpointing, policy_only
from betadpo_lightning.checks import check_batch, check_finite
from betadpo_lightning.losses import PAIR_LOSSES, pair_margins
from betadpo_lightning.models import (
    DType,
    LoraOptions,
    apply_lora,
    build_causal_lm,
    disable_dropout,
    enable_activation_checkpointing,
    frozen_copy,
    tokenizer_config_defaults,
)
from betadpo_lightning.parallel import data_parallel_mesh, fully_shard_causal_lm, sharded_frozen_copy, wrap_for_fsdp1
from betadpo_lightning.quantization import Quantization, prepare_quantized_policy
from betadpo_lightning.reference import FrozenReference, ReferenceProvider
from betadpo_lightning.schedulers import LinearWarmup
from betadpo_lightning.scoring import head_unsupported_reason, perturbed_rows, score_rows
from betadpo_lightning.types import PairData

__all__ = ["PreferenceModule"]

LossType = Literal["sigmoid", "robust", "ipo", "hinge"]
HeadOption = Literal["auto", "full"]


class PreferenceModule(ReferenceCheckpointing):
    """A trainable policy and a reference, one concatenated forward over the ``(2B, T)`` batch per model.

    The reference comes from a :mod:`~betadpo_lightning.reference` provider: a frozen copy (default), the policy
    with its adapters disabled, precomputed values carried in the batch, or none. A separate reference model is the
    submodule ``reference_model``: it follows device moves and precision plugins, is always in eval mode, has no
    gradient, is not in the optimizer and is left out of checkpoints (its weight fingerprint is saved instead, so a
    resume against a different reference fails with a message that says what differs).

    The policy trains in train mode whatever its source (``from_pretrained`` returns eval-mode models), so
    ``gradient_checkpointing`` and ``dropout`` take effect.

    Without a β provider (see :mod:`betadpo_lightning.callbacks.protocol`) it trains with the fixed ``beta`` and
    logs the preference metrics itself; with :class:`~betadpo_lightning.callbacks.DynamicBetaCallback` the
    callback's controller decides β and the pairs kept, and the callback logs those metrics. ``train/loss`` is
    always logged here, as a mean over the logging window.

    Args:
        model_name_or_path: hub name or local directory of the policy.
        model_config: instead of a checkpoint, a ``transformers`` config dict with ``model_type`` for a randomly
            initialised model (tests, the quickstart); ``vocab_size`` and special token ids default to the
            datamodule's tokenizer, and the resolved values are saved in the hyperparameters.
        reference: where reference log-probs come from (``None``: a frozen copy of the initial policy).
        loss_type: ``sigmoid`` (DPO / cDPO), ``robust``, ``ipo`` or ``hinge``.
        beta: β of the loss (with a dynamic-β callback its controller's β0 is used, and should equal this).
        label_smoothing: ε of cDPO (``sigmoid``) or robust DPO; must be 0 for ``ipo`` and ``hinge``.
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
            (:mod:`~betadpo_lightning.scoring`), for the models it supports, and full logits otherwise; ``full``
            always computes the full ``(2B, T, V)`` logits.
        optimizer: optimizer factory over the policy's trainable parameters (``None``: AdamW, lr 1e-6, no decay).
        scheduler: LR scheduler factory, stepped every optimizer step (``None``: linear warmup over the first
            10% of the steps, then constant).
        check_finite: raise as soon as a margin or the loss is NaN/inf, or a row has no response token (one
            host synchronisation per step).
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        reference: ReferenceProvider | None = None,
        loss_type: LossType = "sigmoid",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
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
        check_finite: bool = True,
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
        self._loss.fn(torch.zeros(1), beta, label_smoothing)  # validates label_smoothing for this loss now
        if isinstance(reference, Mapping):  # from a checkpoint's hparams (plain data)
            reference = ReferenceProvider.from_config(reference)
        self.reference_provider = reference if reference is not None else FrozenReference()
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "reference"])
        self.hparams["reference"] = self.reference_provider.config()  # plain data: checkpoints load weights-only
        self.beta, self.label_smoothing = float(beta), float(label_smoothing)
        self.average_logps = self._loss.average_logps if average_logps is None else average_logps
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.check_finite = check_finite
        self.policy: nn.Module | None = None
        self.reference_model: nn.Module | None = None
        self.beta_provider: BetaProvider | None = None
        self.reporter = PreferenceReporter()
        self._reference_origin: dict[str, Any] = {}
        self._reference_built = False
        self._head_support: dict[int, bool] = {}
        self._base_keys: frozenset[str] = frozenset()

    @property
    def pair_extras(self) -> frozenset[str]:
        """Extra groups this module can put into its pairs: token counts, and what the reference provider offers."""
        return frozenset({"lengths"}) | self.reference_provider.provides

    @property
    def reference(self) -> nn.Module | None:
        """The separate reference model, or ``None`` for providers without one."""
        if self.policy is None:
            raise RuntimeError("The models do not exist yet: `configure_model()` has not run.")
        if not self._reference_built:
            self._build_reference()
        return self.reference_model

    # ------------------------------------------------------------------ models
    @override
    def configure_model(self) -> None:
        """Build the policy and the reference (the reference not in :meth:`load_from_checkpoint`).

        Idempotent, as Lightning may call it more than once.
        """
        if self.policy is None:
            self.policy = self._build_policy()
            self._base_keys = self._unsaved_policy_keys()
        if not self._reference_built and not policy_only():
            self._build_and_shard_reference()

    def _build_policy(self) -> nn.Module:
        hp = self.hparams
        config = hp.model_config
        if config is not None:
            config = self.hparams["model_config"] = {**self._tokenizer_defaults(), **config}
        policy = build_causal_lm(hp.model_name_or_path, config, quantization=hp.quantization, **self._load_kwargs())
        if hp.quantization is not None:
            policy = prepare_quantized_policy(policy, gradient_checkpointing=False)
        if hp.lora is not None:
            policy = apply_lora(policy, hp.lora)
        if not hp.dropout:
            disable_dropout(policy)
        if hp.gradient_checkpointing:
            enable_activation_checkpointing(policy)
        return policy.train()

    def _build_and_shard_reference(self) -> None:
        hp = self.hparams
        strategy = self._trainer.strategy if self._trainer is not None else None
        mesh = data_parallel_mesh(strategy, self.device_mesh) if strategy is not None else None
        if mesh is not None:  # shard the policy first: a copy of it is then built sharded, never in full
            fully_shard_causal_lm(self.policy, mesh)
        copy = frozen_copy if mesh is None or hp.lora is not None else functools.partial(sharded_frozen_copy, mesh=mesh)
        self._build_reference(copy)
        if self._trainer is not None:
            entropy = "reference_entropy" in self._wanted_extras()
            self.reference_provider.prepare(self, self._trainer, entropy, self._loader())
        if mesh is not None and self.reference_model is not None and not _is_sharded(self.reference_model):
            fully_shard_causal_lm(self.reference_model, mesh)
        self.reference_model = wrap_for_fsdp1(strategy, self.reference_model)

    def _load_kwargs(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "dtype": hp.dtype,
            "attn_implementation": hp.attn_implementation,
            "trust_remote_code": hp.trust_remote_code,
        }

    def _loader(self) -> Callable[..., nn.Module]:
        device = self._trainer.strategy.root_device if self._trainer is not None else None
        return functools.partial(build_causal_lm, device=device, **self._load_kwargs())

    def _unsaved_policy_keys(self) -> frozenset[str]:
        """Frozen base weights of a LoRA policy loaded from a checkpoint: rebuilt from it, never saved."""
        if self.hparams.lora is None or self.hparams.model_name_or_path is None or self.policy is None:
            return frozenset()
        return frozenset(f"policy.{name}" for name, p in self.policy.named_parameters() if not p.requires_grad)

    def _build_reference(self, copy: Callable[[nn.Module], nn.Module] = frozen_copy) -> None:
        assert self.policy is not None
        reference = self.reference_provider.build(self.policy, self._loader(), copy)
        self._reference_built = True
        self._reference_origin = {"provider": repr(self.reference_provider), "seed": os.environ.get("PL_GLOBAL_SEED")}
        if reference is not None:
            if not self.hparams.dropout:
                disable_dropout(reference)
            self.reference_model = reference.eval().requires_grad_(False)
            total = sum(p.numel() for p in reference.parameters())
            rank_zero_info(
                f"PreferenceModule: {self.reference_provider!r} with {total:,} parameters (not checkpointed)."
            )

    def _tokenizer_defaults(self) -> dict[str, Any]:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        tokenizer = getattr(datamodule, "tokenizer", None)
        return tokenizer_config_defaults(tokenizer) if tokenizer is not None else {}

    @override
    def train(self, mode: bool = True) -> PreferenceModule:
        super().train(mode)
        if self.reference_model is not None:
            self.reference_model.eval()  # never in train mode, whatever the caller asks of the module
        return self

    @override
    def on_fit_start(self) -> None:
        self.reporter.to(self.device)
        if self.reference_model is not None:  # the reference is in eval mode on purpose: silence exactly that
            count = sum(1 for _ in self.reference_model.modules())
            warnings.filterwarnings(
                "ignore", message=rf"Found {count} module\(s\) in eval mode at the start", category=PossibleUserWarning
            )
        embeddings = self.policy.get_input_embeddings().weight.shape[0] if self.policy is not None else None
        tokenizer = getattr(self.trainer.datamodule, "tokenizer", None) if self.trainer.datamodule else None
        if tokenizer is not None and embeddings is not None and len(tokenizer) > embeddings:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the policy's embedding has {embeddings} rows; "
                "use the model's own tokenizer or resize the embeddings."
            )

    # -------------------------------------------------------------------- step
    def _wanted_extras(self) -> frozenset[str]:
        """The extra groups the β provider's controller requires."""
        provider = self.beta_provider
        return provider.required_extras if provider is not None else frozenset()

    def _use_head(self, *models: nn.Module) -> bool:
        """Whether the response-only head serves all of ``models`` (the reason for the fallback is logged once)."""
        if self.hparams.head == "full":
            return False
        for model in models:
            if id(model) not in self._head_support:
                reason = head_unsupported_reason(model)
                self._head_support[id(model)] = reason is None
                if reason is not None:
                    rank_zero_info(f"PreferenceModule: full logits for {type(model).__name__}: {reason}.")
        return all(self._head_support[id(model)] for model in models)

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
        labels = batch["labels"]
        lengths = (labels[:, 1:] != -100).sum(-1).float()  # (2B,)
        entropy, perturb = "reference_entropy" in extras, "perturbed_logps" in extras
        provider = self.reference_provider
        if perturb and (epsilon is None or not provider.has_model):
            raise ValueError("Perturbed log-probs need an `epsilon` and a reference model (reference logits).")
        average = self.average_logps
        # Perturbed log-probs combine both models' logits chunk by chunk: both on the same path.
        head = self._use_head(self.policy, *([self.reference or self.policy] if perturb else []))
        policy = score_rows(self.policy, batch, head, average, keep=perturb)
        with torch.no_grad(), provider.model(self.policy, self.reference) if provider.has_model else nullcontext() as m:
            if m is not None:
                ref = score_rows(m, batch, head if perturb else self._use_head(m), average, entropy, keep=perturb)
                reference, ref_entropy = ref.logps, ref.entropy
            else:
                reference, ref_entropy = provider.rows(batch, entropy)
                reference = reference / lengths.clamp(min=1) if average else reference  # precomputed: sums
            perturbed = perturbed_rows(policy, ref, labels, epsilon) if perturb else None  # type: ignore[arg-type]
        if perturbed is not None and average:
            perturbed = (perturbed[0] / lengths.clamp(min=1), perturbed[1] / lengths.clamp(min=1))
        return PairData.from_rows(
            policy.logps,
            reference.to(policy.logps.dtype),
            perturbed,
            lengths=lengths,
            reference_entropy=ref_entropy,
            pair_index=batch.get("pair_index"),
        )

    def _step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        check_batch(batch)
        provider = self.beta_provider
        pairs = self.forward_pairs(batch, self._wanted_extras())
        margins = pair_margins(pairs)  # (B,)
        if self.check_finite:
            check_finite(margins, batch["labels"], self.global_step)
        if provider is not None:
            decision = provider.decide(pairs.detach())
        else:
            decision = static_decision(pairs, self.beta)
            self.reporter.update_pairs(stage, pairs, self.beta)
        loss = decision.reduce(self._loss.fn(margins, decision.beta, self.label_smoothing))
        if self.check_finite and not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"The {stage} loss is {loss.item()} at global step {self.global_step}.")
        if stage == "train":
            self.reporter.update_scalars({"loss": loss})
        else:  # Lightning's epoch mean weighted by pairs: exact whatever the batching, one collective per run
            self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(pairs))
        return {"loss": loss}

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "val")

    # ----------------------------------------------------------------- logging
    @override
    def on_train_start(self) -> None:
        self.reporter.on_train_start(self.trainer)

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.reporter.log_train_if_due(self.trainer, self, prog_bar=("loss",), pairs=self.beta_provider is None)

    @override
    def on_validation_start(self) -> None:
        self.reporter.to(self.device).reset_validation()

    @override
    def on_validation_epoch_end(self) -> None:
        if self.beta_provider is None:
            self.reporter.log_validation(self.trainer, self)

    # --------------------------------------------------------------- optimizer
    @override
    def configure_optimizers(self) -> dict[str, Any]:
        if self.policy is None:
            raise RuntimeError("`configure_model()` must run before `configure_optimizers()`.")
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            optimizer: Optimizer = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0)
        else:
            optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            total = self.trainer.estimated_stepping_batches if self._trainer is not None else float("inf")
            warmup = 0 if total == float("inf") else int(0.1 * total)
            scheduler: LRScheduler = LinearWarmup(optimizer, warmup_steps=warmup)
        else:
            scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _is_sharded(model: nn.Module) -> bool:
    return type(model).__name__.startswith("FSDP")
