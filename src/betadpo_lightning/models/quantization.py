"""bitsandbytes quantisation of frozen weights: a 4-bit or 8-bit reference, a 4-bit policy under LoRA (QLoRA)."""

from __future__ import annotations

from typing import Any, Literal

import torch

__all__ = ["QUANTIZATIONS", "Quantization", "bitsandbytes_config", "prepare_quantized_policy"]

Quantization = Literal["4bit", "8bit"]
QUANTIZATIONS: tuple[str, ...] = ("4bit", "8bit")


def bitsandbytes_config(quantization: Quantization, compute_dtype: torch.dtype | str | None = None) -> Any:
    """The ``transformers.BitsAndBytesConfig`` for ``"4bit"`` (NF4, double quantisation) or ``"8bit"``.

    Args:
        quantization: ``"4bit"`` or ``"8bit"``.
        compute_dtype: dtype of the 4-bit matrix products (``None`` or ``"auto"``: float32).

    Raises:
        ValueError: for another value.
        ImportError: without bitsandbytes, with the command that installs it.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Expected `quantization` in {QUANTIZATIONS} or None, got {quantization!r}.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:  # pragma: no cover - a dependency of the package
        raise ImportError("Quantisation needs bitsandbytes: pip install bitsandbytes") from error
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    dtype = compute_dtype if isinstance(compute_dtype, torch.dtype) else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )


def prepare_quantized_policy(model: torch.nn.Module, gradient_checkpointing: bool) -> torch.nn.Module:
    """Prepare a quantised base model for adapter training (peft: frozen base, float32 norms)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
