"""Building the policy and the reference for a preference module, for any strategy (the models half of it)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import Self, override

from betadpo_lightning.models.building import (
    apply_lora,
    build_causal_lm,
    disable_dropout,
    enable_activation_checkpointing,
    frozen_copy,
    tokenizer_config_defaults,
)
from betadpo_lightning.models.quantization import prepare_quantized_policy
from betadpo_lightning.models.reference import ReferenceProvider
from betadpo_lightning.models.sharding import (
    data_parallel_mesh,
    fully_shard_causal_lm,
    sharded_frozen_copy,
    wrap_for_fsdp1,
)
from betadpo_lightning.training.reference_checkpointing import ReferenceCheckpointing, policy_only

__all__ = ["PolicyAndReference"]


class PolicyAndReference(ReferenceCheckpointing):
    """The ``configure_model`` of a preference module: the policy, then the reference from its provider.

    Reads the hyperparameters ``model_name_or_path``, ``model_config``, ``dtype``, ``attn_implementation``,
    ``trust_remote_code``, ``quantization``, ``lora``, ``dropout`` and ``gradient_checkpointing``; the subclass sets
    ``reference_provider`` and ``reference_extras`` and calls ``_init_models()`` in its ``__init__``.
    """

    reference_provider: ReferenceProvider
    reference_extras: frozenset[str] = frozenset()
    """The extra groups the reference must supply (a precomputed reference caches exactly those)."""

    def _init_models(self) -> None:
        self.policy: nn.Module | None = None
        self.reference_model: nn.Module | None = None
        self._reference_origin: dict[str, Any] = {}
        self._reference_built = False
        self._base_keys: frozenset[str] = frozenset()

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
            entropy = "reference_entropy" in self.reference_extras
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
    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        if self.reference_model is not None:
            self.reference_model.eval()  # never in train mode, whatever the caller asks of the module
        return self


def _is_sharded(model: nn.Module) -> bool:
    return type(model).__name__.startswith("FSDP")
