"""Keeping the reference out of checkpoints: the partial state dict, the reference's record, inference loading."""

from __future__ import annotations

import contextvars
from typing import Any

import lightning.pytorch as pl
from torch import nn
from typing_extensions import Self, override

from betadpo_lightning.training.checks import reference_mismatch, weights_fingerprint

__all__ = ["REFERENCE_PREFIX", "ReferenceCheckpointing", "policy_only"]

REFERENCE_PREFIX = "reference_model."
"""State-dict prefix of the reference submodule, which checkpoints never hold."""

_POLICY_ONLY = contextvars.ContextVar("policy_only", default=False)  # set while loading a checkpoint for inference


def policy_only() -> bool:
    """Whether the module is being built by :meth:`ReferenceCheckpointing.load_from_checkpoint` (no reference)."""
    return _POLICY_ONLY.get()


class ReferenceCheckpointing(pl.LightningModule):
    """Lightning's partial-checkpoint pattern for a module with a frozen ``reference_model`` submodule.

    The reference is left out of ``state_dict`` (it is rebuilt by ``configure_model``) and missing reference keys
    are allowed on load, while every other mismatch still fails a strict load. Instead of the weights, the
    checkpoint holds a record of the reference (provider, seed, weight fingerprint), and a resume against a
    different reference fails with a message saying what differs.

    Subclasses set ``reference_model`` (or ``None``) and ``_reference_origin`` (``provider`` and ``seed``).
    """

    reference_model: nn.Module | None
    _reference_origin: dict[str, Any]
    _base_keys: frozenset[str] = frozenset()

    def _unsaved(self, key: str) -> bool:
        """Whether a state-dict key stays out of checkpoints.

        The reference's keys never enter them, nor the frozen base of a LoRA policy loaded from a checkpoint
        (``_base_keys``, rebuilt from that checkpoint).
        """
        return key.startswith(REFERENCE_PREFIX) or key in self._base_keys

    @classmethod
    def load_from_checkpoint(cls, *args: Any, **kwargs: Any) -> Self:  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``, building the policy only (for inference and export).

        The reference is built when first needed: by :attr:`reference`, or by ``configure_model`` when the module
        then trains under a Trainer (as a copy of the loaded policy, for the default provider).
        """
        token = _POLICY_ONLY.set(True)
        try:
            return super().load_from_checkpoint(*args, **kwargs)  # type: ignore[return-value]
        finally:
            _POLICY_ONLY.reset(token)

    @override
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for key in [k for k in state if self._unsaved(k[len(prefix) :])]:
            del state[key]  # the reference is rebuilt by configure_model, never saved
        return state

    @override
    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [key for key in result.missing_keys if not self._unsaved(key)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"The checkpoint does not match the policy: missing keys {missing[:5]}, unexpected keys "
                f"{result.unexpected_keys[:5]} (of {len(missing)} and {len(result.unexpected_keys)})."
            )
        return result

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["reference"] = {**self._reference_origin, "fingerprint": weights_fingerprint(self.reference_model)}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("reference")
        if saved is None or self.reference_model is None:  # nothing to compare (e.g. load_from_checkpoint)
            return
        current = {**self._reference_origin, "fingerprint": weights_fingerprint(self.reference_model)}
        message = reference_mismatch(saved, current)
        if message:
            raise RuntimeError(message)
