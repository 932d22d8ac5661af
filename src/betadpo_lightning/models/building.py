"""Building the policy and the reference: a hub name, a local directory, or a small config for tiny models."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from betadpo_lightning.models.hub import hub_errors
from betadpo_lightning.models.quantization import Quantization, bitsandbytes_config

__all__ = [
    "DType",
    "LoraOptions",
    "apply_lora",
    "build_causal_lm",
    "disable_dropout",
    "enable_activation_checkpointing",
    "eval_mode",
    "freeze",
    "frozen_copy",
    "resolve_dtype",
    "tokenizer_config_defaults",
]

DType = Literal["float32", "bfloat16", "float16", "auto"]
LoraOptions = dict[str, Any]
"""Keyword arguments of ``peft.LoraConfig`` (``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``, ...)."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: DType | None) -> torch.dtype | str | None:
    """Map a config string to what ``from_pretrained(dtype=...)`` takes.

    Raises:
        ValueError: for an unknown name.
    """
    if dtype is None or dtype == "auto":
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"Expected `dtype` in {[*_DTYPES, 'auto', None]}, got {dtype!r}.")
    return _DTYPES[dtype]


def build_causal_lm(
    name_or_path: str | None = None,
    config: dict[str, Any] | None = None,
    dtype: DType | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    defaults: dict[str, Any] | None = None,
    quantization: Quantization | None = None,
    device: torch.device | str | None = None,
    role: str = "policy",
) -> nn.Module:
    """A ``transformers`` causal LM from a hub name / local directory, or randomly initialised from a config.

    Args:
        name_or_path: hub name or local directory, loaded with ``AutoModelForCausalLM.from_pretrained``.
        config: a config dict with a ``model_type`` key (e.g. ``{"model_type": "llama", "hidden_size": 64, ...}``),
            built with ``AutoConfig.for_model`` and initialised from the current torch seed. Exactly one of
            ``name_or_path`` and ``config`` must be given.
        dtype: parameter dtype (``None``: the library's default, float32).
        attn_implementation: e.g. ``"sdpa"``, ``"eager"``, ``"flash_attention_2"``.
        trust_remote_code: allow custom model code from the hub.
        defaults: config values used where ``config`` does not set them (e.g. the tokenizer's vocab size).
        quantization: load the linear layers in ``"4bit"`` (NF4, double quantisation) or ``"8bit"`` through
            bitsandbytes; the output layer stays unquantised. Only for ``name_or_path``.
        device: where a quantised model is loaded (``None``: CPU).
        role: what the model is for, named when ``name_or_path`` cannot be found (e.g. ``"reference model"``).

    Returns:
        The model.

    Raises:
        ValueError: unless exactly one of ``name_or_path`` / ``config`` is given, without ``model_type``, or for a
            quantised ``config`` model.
        HubUnavailableError: when ``name_or_path`` is neither a local path nor in the cache or on a reachable hub
            (:mod:`~betadpo_lightning.models.hub`; with the hub unreachable only the cache is tried, without retries).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if (name_or_path is None) == (config is None):
        raise ValueError("Give exactly one of `model_name_or_path` (hub name or directory) and `model_config`.")
    kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    torch_dtype = resolve_dtype(dtype)
    if quantization is not None:
        if name_or_path is None:
            raise ValueError("A quantised model is loaded from a checkpoint (`name_or_path`), not built from a config.")
        kwargs["quantization_config"] = bitsandbytes_config(quantization, torch_dtype)
        kwargs["device_map"] = {"": str(device or "cpu")}
    if name_or_path is not None:
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        with hub_errors(name_or_path, role) as unreachable:
            if unreachable:  # the cache only; the adapter look-up of `transformers` needs its own switch
                kwargs.update(local_files_only=True, adapter_kwargs={"local_files_only": True})
            return AutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    assert config is not None
    values = {**(defaults or {}), **config}
    if "model_type" not in values:
        raise ValueError(f"`model_config` needs a `model_type` (e.g. 'llama', 'gpt2'); got keys {sorted(values)}.")
    model_config = AutoConfig.for_model(**values)
    model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code, **kwargs)
    if isinstance(torch_dtype, torch.dtype):
        model = model.to(torch_dtype)
    return model


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability of ``model`` to 0: ``nn.Dropout`` modules and float attention-dropout fields.

    DPO compares the policy with the reference on the same inputs; dropout would make the two differ by noise
    (the first-step loss would no longer be exactly log 2).
    """
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name in ("attention_dropout", "dropout", "attn_dropout", "resid_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    if config is not None:
        for name, value in vars(config).items():
            if "dropout" in name and isinstance(value, float):
                setattr(config, name, 0.0)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (non-reentrant), with the API of the installed ``transformers``."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule of ``module`` in eval mode for the block, then restore each one's own mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter; returns the model."""
    model.eval()
    model.requires_grad_(False)
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy (same weights, independent storage)."""
    return freeze(copy.deepcopy(model))


def apply_lora(model: nn.Module, options: LoraOptions) -> nn.Module:
    """Wrap ``model`` with LoRA adapters through peft; only the adapters stay trainable.

    Args:
        model: a ``transformers`` causal LM.
        options: ``peft.LoraConfig`` arguments; ``task_type`` defaults to ``"CAUSAL_LM"`` and ``target_modules`` to
            every linear layer (``"all-linear"``).

    Returns:
        The ``peft.PeftModel``.

    Raises:
        ImportError: without peft installed (the ``peft`` extra).
        ValueError: for options peft rejects, naming them.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:  # pragma: no cover - peft is installed with the test extra
        raise ImportError("LoRA needs peft: pip install 'betadpo-lightning[peft]'") from error
    settings = {"task_type": "CAUSAL_LM", "target_modules": "all-linear", **options}
    try:
        config = LoraConfig(**settings)
    except TypeError as error:
        raise ValueError(f"Invalid `lora` options {sorted(options)}: {error}") from None
    with warnings.catch_warnings():  # peft still calls the attribute transformers 5 renamed; nothing for users to do
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


def tokenizer_config_defaults(tokenizer: Any) -> dict[str, Any]:
    """Model-config values that must agree with a tokenizer: ``vocab_size`` (its length) and the pad/BOS/EOS ids.

    Example:
        >>> from types import SimpleNamespace
        >>> class Tok(SimpleNamespace):
        ...     def __len__(self): return 64
        >>> tokenizer_config_defaults(Tok(pad_token_id=0, bos_token_id=1, eos_token_id=None))
        {'vocab_size': 64, 'pad_token_id': 0, 'bos_token_id': 1}
    """
    ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id", None) for name in ("pad", "bos", "eos")}
    return {"vocab_size": len(tokenizer), **{key: value for key, value in ids.items() if value is not None}}
