"""PreferenceModule: a trainable policy and a frozen reference, trained with a loss of the DPO family."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from typing_extensions import override

from betadpo_lightning.callbacks.protocol import BetaProvider, static_decision
from betadpo_lightning.checks import check_batch, check_finite, weights_fingerprint
from betadpo_lightning.logps import sequence_logps
from betadpo_lightning.losses import PAIR_LOSSES, dpo_margins
from betadpo_lightning.models import (
    DType,
    build_causal_lm,
    disable_dropout,
    enable_activation_checkpointing,
    freeze,
    frozen_copy,
)
from betadpo_lightning.parallel import fully_shard_causal_lm
from betadpo_lightning.schedulers import LinearWarmup

__all__ = ["PreferenceModule"]

LossType = Literal["sigmoid", "robust", "ipo", "hinge"]


class PreferenceModule(pl.LightningModule):
    """Trainable policy + frozen reference, one concatenated forward over the ``(2B, T)`` batch per model.

    The reference is a separate frozen copy: eval mode, ``requires_grad=False``, run under ``torch.no_grad()``, not
    in the optimizer and not written into checkpoints (it is rebuilt by :meth:`configure_model`; a fingerprint of
    its weights in the checkpoint makes a resume with a different reference fail loudly). It follows the module in
    ``.to()``/dtype changes but is not a submodule, so ``trainer.fit`` never switches it to train mode.

    Without a β provider (see :mod:`betadpo_lightning.callbacks.protocol`) it trains plain DPO with the fixed
    ``beta``; with :class:`~betadpo_lightning.callbacks.DynamicBetaCallback` attached it trains β-DPO.

    Args:
        model_name_or_path: hub name or local directory of the policy (also of the reference by default).
        model_config: instead of a checkpoint, a ``transformers`` config dict with ``model_type`` for a randomly
            initialised model (tests, the quickstart); ``vocab_size`` and special token ids default to the
            datamodule's tokenizer.
        reference_name_or_path: a different checkpoint for the reference; by default a copy of the initial policy.
        loss_type: ``sigmoid`` (DPO / cDPO), ``robust``, ``ipo`` or ``hinge``.
        beta: β of the loss (β0 when a dynamic-β callback is attached).
        label_smoothing: ε of cDPO (``sigmoid``) or robust DPO; must be 0 for ``ipo`` and ``hinge``.
        average_logps: use length-averaged log-probs; ``None`` picks the loss's convention (IPO: yes, others: no).
        dtype: dtype the models are loaded in (``None``: float32; use ``precision`` for mixed precision).
        attn_implementation: ``transformers`` attention kernel (``sdpa``, ``eager``, ``flash_attention_2``).
        trust_remote_code: allow custom model code from the hub.
        gradient_checkpointing: recompute the policy's activations in the backward pass.
        dropout: keep the models' dropout; by default every dropout is disabled in both models.
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
        reference_name_or_path: str | None = None,
        loss_type: LossType = "sigmoid",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        average_logps: bool | None = None,
        dtype: DType | None = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
        dropout: bool = False,
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
        self._loss = PAIR_LOSSES[loss_type]
        self._loss.fn(torch.zeros(1), beta, label_smoothing)  # validates label_smoothing for this loss now
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.beta, self.label_smoothing = float(beta), float(label_smoothing)
        self.average_logps = self._loss.average_logps if average_logps is None else average_logps
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.check_finite = check_finite
        self.policy: nn.Module | None = None
        self._frozen: dict[str, nn.Module] = {}  # not a submodule: no train mode, no checkpoint, no DDP sync
        self.beta_provider: BetaProvider | None = None

    @property
    def reference(self) -> nn.Module:
        """The frozen reference model (after :meth:`configure_model`)."""
        if "reference" not in self._frozen:
            raise RuntimeError("The reference does not exist yet: `configure_model()` has not run.")
        return self._frozen["reference"]

    # ------------------------------------------------------------------ models
    @override
    def configure_model(self) -> None:
        if self.policy is not None:  # idempotent: Lightning may call it more than once
            return
        hp = self.hparams
        common = {"dtype": hp.dtype, "attn_implementation": hp.attn_implementation}
        common["trust_remote_code"] = hp.trust_remote_code
        policy = build_causal_lm(hp.model_name_or_path, hp.model_config, defaults=self._tokenizer_defaults(), **common)
        if hp.reference_name_or_path is not None:
            reference = freeze(build_causal_lm(hp.reference_name_or_path, **common))
        else:
            reference = frozen_copy(policy)
        if not hp.dropout:
            disable_dropout(policy)
            disable_dropout(reference)
        if hp.gradient_checkpointing:
            enable_activation_checkpointing(policy)
        self.policy = policy
        self._frozen["reference"] = self._shard(policy, reference)
        total = sum(p.numel() for p in reference.parameters())
        rank_zero_info(f"PreferenceModule: frozen reference with {total:,} parameters (not checkpointed).")

    def _shard(self, policy: nn.Module, reference: nn.Module) -> nn.Module:
        """Shard both models for the strategy; returns the (possibly wrapped) reference.

        FSDP2 (``ModelParallelStrategy``): ``fully_shard`` per decoder layer for both models. FSDP1 (``FSDPStrategy``):
        the reference is wrapped here with the strategy's settings (this hook runs inside its ``enable_wrap``
        context); the policy is wrapped by the strategy with the rest of the module.
        """
        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, ModelParallelStrategy):
            mesh = self.device_mesh["data_parallel"]
            fully_shard_causal_lm(policy, mesh)
            fully_shard_causal_lm(reference, mesh)
        elif isinstance(strategy, FSDPStrategy):
            from torch.distributed.fsdp.wrap import wrap

            reference = wrap(reference)
        return reference

    def _tokenizer_defaults(self) -> dict[str, Any]:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is None:
            return {}
        ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id", None) for name in ("pad", "bos", "eos")}
        return {"vocab_size": len(tokenizer), **{k: v for k, v in ids.items() if v is not None}}

    @override
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> PreferenceModule:
        # `.to(device)`, `.half()`, precision plugins: the reference follows the module.
        super()._apply(fn, recurse)
        if "reference" in self._frozen:
            self._frozen["reference"]._apply(fn, recurse)
        return self

    @override
    def on_fit_start(self) -> None:
        embeddings = self.policy.get_input_embeddings().weight.shape[0] if self.policy is not None else None
        tokenizer = getattr(self.trainer.datamodule, "tokenizer", None) if self.trainer.datamodule else None
        if tokenizer is not None and embeddings is not None and len(tokenizer) > embeddings:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the policy's embedding has {embeddings} rows; "
                "use the model's own tokenizer or resize the embeddings."
            )

    # -------------------------------------------------------------------- step
    def _logps(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        logits = out.logits if hasattr(out, "logits") else out  # (2B, T, V)
        return sequence_logps(logits, batch["labels"], average=self.average_logps)  # (2B,)

    def forward_logps(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Policy (with grad) and reference (without) log-probs of every row of a ``(2B, T)`` batch, each ``(2B,)``."""
        policy = self._logps(self.policy, batch)
        with torch.no_grad():
            reference = self._logps(self.reference, batch)
        return policy, reference

    def _step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        check_batch(batch)
        policy, reference = self.forward_logps(batch)
        b = batch["input_ids"].shape[0] // 2
        pc, pr, rc, rr = policy[:b], policy[b:], reference[:b], reference[b:]  # (B,) each
        margins = dpo_margins(pc, pr, rc, rr)  # (B,)
        if self.check_finite:
            check_finite(margins, batch["labels"], self.global_step)
        provider = self.beta_provider
        decision = provider.decide(margins.detach()) if provider is not None else static_decision(margins, self.beta)
        loss = decision.reduce(self._loss.fn(margins, decision.beta, self.label_smoothing))
        if self.check_finite and not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"The {stage} loss is {loss.item()} at global step {self.global_step}.")
        training = stage == "train"
        self.log(
            f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=b, on_step=training, on_epoch=not training
        )
        outputs = {"policy_chosen_logps": pc, "policy_rejected_logps": pr}
        outputs |= {"reference_chosen_logps": rc, "reference_rejected_logps": rr}
        return {"loss": loss, **{key: value.detach() for key, value in outputs.items()}}

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "val")

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
            scheduler: LRScheduler = LinearWarmup(optimizer, warmup_steps=self._default_warmup_steps())
        else:
            scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _default_warmup_steps(self) -> int:
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else float("inf")
        return 0 if total == float("inf") else int(0.1 * total)

    # -------------------------------------------------------------- checkpoint
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        fingerprint = weights_fingerprint(self._frozen.get("reference"))
        if fingerprint is not None:
            checkpoint["reference_fingerprint"] = fingerprint

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("reference_fingerprint")
        current = weights_fingerprint(self._frozen.get("reference"))
        if saved is not None and current is not None and not torch.allclose(saved, current, rtol=1e-5, atol=1e-6):
            raise RuntimeError(
                "The reference model differs from the one the checkpoint was trained against (weight fingerprint "
                f"{current.tolist()} vs {saved.tolist()}). A randomly initialised `model_config` rebuilds the same "
                "reference only under the same seed (`seed_everything`)."
            )
