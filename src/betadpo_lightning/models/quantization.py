"""bitsandbytes quantisation of frozen weights: a 4-bit or 8-bit reference, a 4-bit policy under LoRA (QLoRA).

On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit layer's weight for a faster inference kernel at its
first forward in eval mode without gradient (a validation, a sanity check, a reference pass through the policy with
its adapters disabled). That kernel has no backward: afterwards the layer passes no gradient to its input (the
adapters of every earlier layer get wrong gradients, with only a warning that an autograd kernel was not registered),
and with a bias (Qwen2) the forward fails. :func:`prepare_quantized_policy` turns the repacking off for the layers of
a policy that is trained, so QLoRA computes the same gradients on CPU as on CUDA; a frozen quantised reference keeps
the fast kernel (it needs no gradient).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

__all__ = [
    "QUANTIZATIONS",
    "Quantization",
    "bitsandbytes_config",
    "keep_4bit_differentiable",
    "prepare_quantized_policy",
]

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


def keep_4bit_differentiable(model: torch.nn.Module) -> int:
    """Keep every bitsandbytes 4-bit layer of ``model`` on its differentiable kernel on CPU (see the module doc).

    Switches off the repacking for bitsandbytes' CPU inference kernel and undoes one already done.

    Returns:
        The number of 4-bit layers.
    """
    import bitsandbytes as bnb

    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse as unpack
    except ImportError:  # a bitsandbytes without the CPU repacking
        unpack = None
    layers = [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False  # read by Linear4bit.forward before it repacks
        state = getattr(layer.weight, "quant_state", None)
        if unpack is not None and getattr(state, "packing_format_for_cpu", False):
            layer.weight.data, layer.weight.quant_state = unpack(layer.weight.data, state)
    return len(layers)


def prepare_quantized_policy(model: torch.nn.Module, gradient_checkpointing: bool) -> torch.nn.Module:
    """Prepare a quantised base model for adapter training: peft's frozen base and float32 norms.

    Its 4-bit layers are kept on their differentiable kernel on CPU (:func:`keep_4bit_differentiable`).
    """
    from peft import prepare_model_for_kbit_training

    keep_4bit_differentiable(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
