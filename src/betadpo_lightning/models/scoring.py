"""Running one causal LM over a ``(2B, T)`` batch and reducing it to per-row values.

Two paths give the same numbers (to float32 tolerance, gradients included):

* **response-only head** (the default where supported): the model's own forward runs with ``logits_to_keep`` empty,
  so it computes its trunk and no logits; the final hidden states are captured, only the positions that predict a
  response token are kept, and :mod:`betadpo_lightning.core.head` projects them chunk by chunk. Because the model's own
  forward runs, FSDP2 gathers the output layer (a root-module parameter) as usual and keeps it gathered through the
  backward pass, so calling it outside the forward is safe.
* **full logits** (fallback): the model's logits ``(2B, T, V)`` and :mod:`betadpo_lightning.core.logps`.

The head is used for the model types it is verified on (:data:`HEAD_MODEL_TYPES`) when the output layer is a plain
linear layer and no logit transform (soft-capping, scaling) follows it; otherwise the full-logits path is used and
the reason is logged once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from betadpo_lightning.core.chunked import sum_by_row
from betadpo_lightning.core.head import head_perturbed_logps, head_token_stats, head_wpo_logps, linear_log_softmax
from betadpo_lightning.core.logps import (
    perturbed_sequence_logps,
    response_positions,
    sequence_entropy,
    sequence_logps,
    sequence_wpo_logps,
)

__all__ = ["HEAD_MODEL_TYPES", "RowScores", "head_unsupported_reason", "perturbed_rows", "score_rows"]

HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox"})
"""``config.model_type`` values the response-only head is verified on (tests compare it with the full logits)."""

_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass
class RowScores:
    """Per-row values of one model on a batch.

    Attributes:
        logps: summed (or averaged) response log-probabilities, ``(2B,)``.
        entropy: the normalised next-token entropy of each row's response positions, ``(2B,)``, when asked.
        hidden: the head path's hidden states of the ``M`` response positions, ``(M, H)``, detached, when asked.
        weight: the head path's output-layer weight ``(V, H)``, detached, when asked.
        bias: the head path's output-layer bias ``(V,)``, if any, when asked.
        logits: the full-logits path's logits ``(2B, T, V)``, detached, when asked.
        wpo: WPO's log-weight of each row (:func:`~betadpo_lightning.core.logps.sequence_wpo_logps`), ``(2B,)``,
            float32, detached, when asked.
    """

    logps: Tensor
    entropy: Tensor | None = None
    hidden: Tensor | None = None
    weight: Tensor | None = None
    bias: Tensor | None = None
    logits: Tensor | None = None
    wpo: Tensor | None = None


def transformers_model(model: nn.Module) -> nn.Module:
    """The ``transformers`` model inside a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def head_unsupported_reason(model: nn.Module) -> str | None:
    """Why the response-only head cannot serve ``model`` (``None`` when it can)."""
    if type(model).__name__ == "FullyShardedDataParallel":
        return "an FSDP1-wrapped model gathers its output layer only inside its own forward"
    base = transformers_model(model)
    config = getattr(base, "config", None)
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            return f"its logits are transformed after the output layer ({name}={value})"
    model_type = getattr(config, "model_type", None)
    if model_type not in HEAD_MODEL_TYPES:
        return f"model type {model_type!r} is not among those the head is verified on ({sorted(HEAD_MODEL_TYPES)})"
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return f"{type(base).__name__}.forward takes no `logits_to_keep`"
    output = base.get_output_embeddings()
    if type(output) is not nn.Linear:
        return f"its output layer is a {type(output).__name__}, not a plain linear layer (LoRA or quantisation on it)"
    return None


def _head_forward(model: nn.Module, batch: dict[str, Tensor], compute: Callable[[nn.Linear, Tensor], Tensor]) -> Tensor:
    """Run the model's own forward with no logits and ``compute(output_layer, hidden (2B, T, H))`` in their place.

    ``compute`` runs inside the forward (a hook on the output layer replaces its empty output), where a sharded
    model (FSDP2) holds the output layer gathered; its result is the forward's ``logits``, so the sharding's
    pre-backward hooks gather the layer again before the backward pass reaches it.
    """
    base = transformers_model(model)
    decoder, layer = base.base_model, base.get_output_embeddings()
    captured: dict[str, Tensor] = {}

    def capture(module: nn.Module, args: Any, output: Any) -> None:
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    def replace(module: nn.Module, args: Any, output: Tensor) -> Tensor:
        return compute(module, captured["hidden"])  # type: ignore[arg-type]

    handles = [decoder.register_forward_hook(capture), layer.register_forward_hook(replace)]
    try:
        none = torch.empty(0, dtype=torch.long, device=batch["input_ids"].device)  # positions to keep logits of
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, logits_to_keep=none
        )
    finally:
        for handle in handles:
            handle.remove()
    return out.logits if hasattr(out, "logits") else out


def score_rows(
    model: nn.Module,
    batch: dict[str, Tensor],
    head: bool,
    average: bool = False,
    entropy: bool = False,
    keep: bool = False,
    wpo: bool = False,
) -> RowScores:
    """Run ``model`` on the batch and reduce it to per-row values (gradients flow when they are enabled).

    Args:
        model: a causal LM (possibly peft-wrapped or sharded).
        batch: ``input_ids``, ``attention_mask``, ``labels`` of shape ``(2B, T)``.
        head: use the response-only head (the caller checked :func:`head_unsupported_reason`).
        average: length-averaged instead of summed log-probabilities.
        entropy: also the normalised next-token entropy per row.
        keep: keep what :func:`perturbed_rows` needs (hidden states and output layer, or logits; detached).
        wpo: also WPO's log-weight per row, computed without gradients whatever the grad mode.

    Returns:
        The :class:`RowScores`.
    """
    labels = batch["labels"]
    if not head:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        logits = out.logits if hasattr(out, "logits") else out  # (2B, T, V)
        return RowScores(
            logps=sequence_logps(logits, labels, average=average),
            entropy=sequence_entropy(logits, labels) if entropy else None,
            wpo=sequence_wpo_logps(logits, labels) if wpo else None,
            logits=logits.detach() if keep else None,
        )
    rows, cols, targets, mask = response_positions(labels)
    kept: dict[str, Any] = {}

    def compute(layer: nn.Linear, hidden: Tensor) -> Tensor:
        selected = hidden[rows, cols]  # (M, H): only the positions that predict a response token
        if keep:  # a sharded layer is gathered only inside this forward: keep a copy of its weight
            sharded = type(model).__name__.startswith("FSDP")
            weight, bias = (layer.weight, layer.bias) if not sharded else _copies(layer)
            kept.update(hidden=selected.detach(), weight=weight.detach(), bias=None if bias is None else bias.detach())
        if wpo:  # here, where a sharded layer is gathered; without gradients
            kept["wpo"] = head_wpo_logps(selected, layer.weight, targets, layer.bias)
        if torch.is_grad_enabled():
            return linear_log_softmax(selected, layer.weight, targets, layer.bias)[None]  # (1, M)
        logps, entropies = head_token_stats(selected, layer.weight, targets, layer.bias, entropy)
        return torch.stack([logps, entropies]) if entropies is not None else logps[None]  # (1 or 2, M)

    token_values = _head_forward(model, batch, compute)
    counts = mask.sum(-1).clamp(min=1)  # (2B,)
    per_row = [sum_by_row(values, rows, labels.shape[0]) for values in token_values]  # (2B,) each
    logps = per_row[0] / counts if average else per_row[0]
    row_entropy = per_row[1] / counts if len(per_row) > 1 else None
    if entropy and row_entropy is None:  # with gradients enabled (a policy pass), the entropy comes without them
        with torch.no_grad():
            row_entropy = score_rows(model, batch, head, entropy=True).entropy
    row_wpo = sum_by_row(kept["wpo"], rows, labels.shape[0]) / counts if wpo else None
    hidden, weight, bias = kept.get("hidden"), kept.get("weight"), kept.get("bias")
    return RowScores(logps, row_entropy, hidden, weight, bias, wpo=row_wpo)


def _copies(layer: nn.Linear) -> tuple[Tensor, Tensor | None]:
    return layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone()


def perturbed_rows(policy: RowScores, reference: RowScores, labels: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """ε-DPO's perturbed log-probs per row, ``(2B,)`` each, from two :func:`score_rows` results made with ``keep``.

    Raises:
        ValueError: when the two results come from different paths or lack what was kept.
    """
    if policy.logits is not None and reference.logits is not None:
        return perturbed_sequence_logps(policy.logits, reference.logits, labels, epsilon)
    if policy.hidden is None or reference.hidden is None or policy.weight is None or reference.weight is None:
        raise ValueError("Perturbed log-probs need both models scored with keep=True on the same path.")
    rows, _, targets, _ = response_positions(labels)
    plus, minus = head_perturbed_logps(
        policy.hidden, policy.weight, reference.hidden, reference.weight, targets, epsilon, policy.bias, reference.bias
    )
    return sum_by_row(plus, rows, labels.shape[0]), sum_by_row(minus, rows, labels.shape[0])
