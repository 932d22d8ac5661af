"""Running one causal LM over a batch and reducing it to per-row values.

The batch is the padded ``(2B, T)`` one (:mod:`betadpo_lightning.data.collate`) or a packed one
(:mod:`betadpo_lightning.data.packing`, for models that take it: :mod:`~betadpo_lightning.models.packed_attention`);
either way the rows are those of the padded layout (chosen rows first) and the response tokens are described by
:class:`ResponseTargets`: which hidden state predicts each of them, the token, and its row. Two paths give the same
numbers (to float32 tolerance, gradients included):

* **response-only head** (the default where supported): the model's own forward runs with ``logits_to_keep`` empty,
  so it computes its trunk and no logits; the final hidden states are captured, only the positions that predict a
  response token are kept, and :mod:`betadpo_lightning.core.head` projects them chunk by chunk. Because the model's own
  forward runs, FSDP2 gathers the output layer (a root-module parameter) as usual and keeps it gathered through the
  backward pass, so calling it outside the forward is safe.
* **full logits** (fallback): the model's logits ``(N, L, V)``, of which the response-predicting positions are
  reduced by :mod:`betadpo_lightning.core.logps`.

The head is used for the model types it is verified on (:data:`HEAD_MODEL_TYPES`) when the output layer is a plain
linear layer and no logit transform (soft-capping, scaling) follows it; otherwise the full-logits path is used and
the reason is logged once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from betadpo_lightning.core.chunked import sum_by_row
from betadpo_lightning.core.head import head_perturbed_logps, head_token_stats, head_wpo_logps, linear_log_softmax
from betadpo_lightning.core.logps import (
    gather_log_softmax,
    response_positions,
    token_entropy,
    token_perturbed_logps,
    token_wpo_logps,
)
from betadpo_lightning.data.packing import is_packed
from betadpo_lightning.models.packed_attention import packed_model_inputs, packing_unsupported_reason

__all__ = [
    "HEAD_MODEL_TYPES",
    "ResponseTargets",
    "RowScores",
    "head_unsupported_reason",
    "perturbed_rows",
    "response_targets",
    "score_rows",
]

HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox"})
"""``config.model_type`` values the response-only head is verified on (tests compare it with the full logits)."""

_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass(frozen=True)
class ResponseTargets:
    """The ``M`` response tokens of a batch: where each is predicted, the token, and its row.

    Attributes:
        index: flat index ``r·L + t`` into the ``(N, L)`` positions: the state predicting each token, ``(M,)``.
        ids: the tokens, ``(M,)``.
        row: each token's row in the padded layout (chosen rows first), ``(M,)``.
        num_rows: the number of rows of the padded layout (``2B`` for pairs).
    """

    index: Tensor
    ids: Tensor
    row: Tensor
    num_rows: int

    def sum(self, values: Tensor) -> Tensor:
        """Per-row sums of per-token ``values`` ``(M,)``: ``(num_rows,)``."""
        return sum_by_row(values, self.row, self.num_rows)

    def counts(self) -> Tensor:
        """The response tokens of each row, ``(num_rows,)`` long."""
        return torch.bincount(self.row, minlength=self.num_rows)


def response_targets(batch: Mapping[str, Tensor] | Tensor, num_rows: int | None = None) -> ResponseTargets:
    """The response tokens of a padded or packed batch (or of a padded batch's ``labels``).

    Args:
        batch: a padded batch (``labels`` ``(N, T)``, ``-100`` off the responses), its ``labels``, or a packed batch.
        num_rows: rows of the padded layout; by default ``N``, or ``2B`` for a packed batch of ``B`` pairs.

    Example:
        >>> targets = response_targets(torch.tensor([[-100, 5, 6], [-100, -100, 7]]))
        >>> targets.index.tolist(), targets.ids.tolist(), targets.counts().tolist()
        ([0, 1, 4], [5, 6, 7], [2, 1])
    """
    if isinstance(batch, Tensor) or not is_packed(batch):
        labels = batch if isinstance(batch, Tensor) else batch["labels"]
        rows, cols, ids, _ = response_positions(labels)
        return ResponseTargets(
            rows * labels.shape[1] + cols, ids, rows, labels.shape[0] if num_rows is None else num_rows
        )
    if num_rows is None:
        num_rows = 2 * int(batch["pair_index"].shape[0])
    return ResponseTargets(batch["target_index"], batch["target_ids"], batch["target_row"], num_rows)


@dataclass
class RowScores:
    """Per-row values of one model on a batch.

    Attributes:
        logps: summed (or averaged) response log-probabilities, ``(2B,)``.
        entropy: the normalised next-token entropy of each row's response positions, ``(2B,)``, when asked.
        hidden: the head path's hidden states of the ``M`` response positions, ``(M, H)``, detached, when asked.
        weight: the head path's output-layer weight ``(V, H)``, detached, when asked.
        bias: the head path's output-layer bias ``(V,)``, if any, when asked.
        logits: the full-logits path's logits of the ``M`` response positions, ``(M, V)``, detached, when asked.
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


def _model_inputs(model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Any]:
    """The forward's inputs: ``input_ids`` and ``attention_mask`` (padded), plus ``position_ids`` (packed).

    Raises:
        ValueError: for a packed batch and a model that cannot take it.
    """
    if not is_packed(batch):
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    base = transformers_model(model)
    reason = packing_unsupported_reason(base)
    if reason is not None:
        raise ValueError(
            f"{type(base).__name__} cannot run a packed batch: {reason}; unpack it first "
            "(betadpo_lightning.data.packed_views.unpack_to_padded)."
        )
    return packed_model_inputs(base, batch)  # type: ignore[arg-type]


def _head_forward(model: nn.Module, inputs: dict[str, Any], compute: Callable[[nn.Linear, Tensor], Tensor]) -> Tensor:
    """Run the model's own forward with no logits and ``compute(output_layer, hidden (N, L, H))`` in their place.

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
        none = torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device)  # positions to keep logits of
        out = model(**inputs, use_cache=False, logits_to_keep=none)
    finally:
        for handle in handles:
            handle.remove()
    return out.logits if hasattr(out, "logits") else out


def score_rows(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    head: bool,
    average: bool = False,
    entropy: bool = False,
    keep: bool = False,
    wpo: bool = False,
    num_rows: int | None = None,
) -> RowScores:
    """Run ``model`` on the batch and reduce it to per-row values (gradients flow when they are enabled).

    Args:
        model: a causal LM (possibly peft-wrapped or sharded).
        batch: a padded batch (``input_ids``, ``attention_mask``, ``labels`` ``(N, T)``) or a packed one (which the
            model must support: :func:`~betadpo_lightning.models.packed_attention.packing_unsupported_reason`).
        head: use the response-only head (the caller checked :func:`head_unsupported_reason`).
        average: length-averaged instead of summed log-probabilities.
        entropy: also the normalised next-token entropy per row.
        keep: keep what :func:`perturbed_rows` needs (hidden states and output layer, or logits; detached).
        wpo: also WPO's log-weight per row, computed without gradients whatever the grad mode.
        num_rows: rows of the padded layout (:func:`response_targets`; by default ``N``, or ``2B`` when packed).

    Returns:
        The :class:`RowScores`, ``(num_rows,)`` values.
    """
    targets = response_targets(batch, num_rows)
    inputs = _model_inputs(model, batch)
    counts = targets.counts().clamp(min=1)  # (N,)
    if not head:
        out = model(**inputs, use_cache=False)
        logits = (out.logits if hasattr(out, "logits") else out).flatten(0, 1)[targets.index]  # (M, V)
        logps = targets.sum(gather_log_softmax(logits, targets.ids))
        return RowScores(
            logps=logps / counts if average else logps,
            entropy=targets.sum(token_entropy(logits)) / counts if entropy else None,
            wpo=targets.sum(token_wpo_logps(logits, targets.ids)) / counts if wpo else None,
            logits=logits.detach() if keep else None,
        )
    kept: dict[str, Any] = {}

    def compute(layer: nn.Linear, hidden: Tensor) -> Tensor:
        selected = hidden.reshape(-1, hidden.shape[-1])[targets.index]  # (M, H): only the response-predicting states
        if keep:  # a sharded layer is gathered only inside this forward: keep a copy of its weight
            sharded = type(model).__name__.startswith("FSDP")
            weight, bias = (layer.weight, layer.bias) if not sharded else _copies(layer)
            kept.update(hidden=selected.detach(), weight=weight.detach(), bias=None if bias is None else bias.detach())
        if wpo:  # here, where a sharded layer is gathered; without gradients
            kept["wpo"] = head_wpo_logps(selected, layer.weight, targets.ids, layer.bias)
        if torch.is_grad_enabled():
            return linear_log_softmax(selected, layer.weight, targets.ids, layer.bias)[None]  # (1, M)
        logps, entropies = head_token_stats(selected, layer.weight, targets.ids, layer.bias, entropy)
        return torch.stack([logps, entropies]) if entropies is not None else logps[None]  # (1 or 2, M)

    token_values = _head_forward(model, inputs, compute)
    per_row = [targets.sum(values) for values in token_values]  # (N,) each
    logps = per_row[0] / counts if average else per_row[0]
    row_entropy = per_row[1] / counts if len(per_row) > 1 else None
    if entropy and row_entropy is None:  # with gradients enabled (a policy pass), the entropy comes without them
        with torch.no_grad():
            row_entropy = score_rows(model, batch, head, entropy=True, num_rows=num_rows).entropy
    row_wpo = targets.sum(kept["wpo"]) / counts if wpo else None
    hidden, weight, bias = kept.get("hidden"), kept.get("weight"), kept.get("bias")
    return RowScores(logps, row_entropy, hidden, weight, bias, wpo=row_wpo)


def _copies(layer: nn.Linear) -> tuple[Tensor, Tensor | None]:
    return layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone()


def perturbed_rows(
    policy: RowScores,
    reference: RowScores,
    batch: Mapping[str, Tensor] | Tensor,
    epsilon: float,
    num_rows: int | None = None,
) -> tuple[Tensor, Tensor]:
    """ε-DPO's perturbed log-probs per row, ``(N,)`` each, from two :func:`score_rows` results made with ``keep``.

    Args:
        policy: the policy's scores.
        reference: the reference's scores, of the same batch on the same path.
        batch: that batch (or a padded batch's ``labels``), for its :func:`response_targets`.
        epsilon: ε.
        num_rows: as for :func:`score_rows`.

    Raises:
        ValueError: when the two results come from different paths or lack what was kept.
    """
    targets = response_targets(batch, num_rows)
    if policy.logits is not None and reference.logits is not None:
        plus, minus = token_perturbed_logps(policy.logits, reference.logits, targets.ids, epsilon)
        return targets.sum(plus), targets.sum(minus)
    if policy.hidden is None or reference.hidden is None or policy.weight is None or reference.weight is None:
        raise ValueError("Perturbed log-probs need both models scored with keep=True on the same path.")
    plus, minus = head_perturbed_logps(
        policy.hidden,
        policy.weight,
        reference.hidden,
        reference.weight,
        targets.ids,
        epsilon,
        policy.bias,
        reference.bias,
    )
    return targets.sum(plus), targets.sum(minus)
