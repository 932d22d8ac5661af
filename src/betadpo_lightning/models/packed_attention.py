"""The attention mask of a packed batch, in the form the model's attention implementation takes.

A packed batch (:mod:`betadpo_lightning.data.packing`) puts each pair's prompt once in a row, followed by both
answers; the answers see their prompt and themselves, never each other, and restart their positions where the
chosen answer started. The model receives ``position_ids`` and, as ``attention_mask``:

* ``sdpa``: a boolean ``(R, 1, L, L)`` mask (``True``: attend);
* ``eager``: the same as an additive float mask (0 or the dtype's minimum), since eager attention adds it to the
  scores;
* ``flex_attention``: a FlexAttention ``BlockMask`` built from a ``mask_mod`` over the segment and branch ids.

``transformers`` (5.x, :func:`transformers.masking_utils._preprocess_mask_arguments`) passes a 4D tensor or a
``BlockMask`` to the attention unchanged: it is neither re-causalised nor combined with a padding mask, and the
packed-sequence detection from ``position_ids`` does not run. Models whose layers use a sliding window get the
window in the mask (on positions, which within a segment are the padded columns): one windowed mask (Mistral), or a
mask per layer type (Qwen2/Qwen3 with ``layer_types``).

Other model types, and attention implementations that ignore a custom mask (``flash_attention_2`` and its kind take
only the sequence boundaries of ``position_ids``, which cannot express a prompt shared by two answers), are served
by the padded batch instead (:func:`packing_unsupported_reason`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "PACKED_ATTENTION",
    "PACKED_MODEL_TYPES",
    "packed_attention_mask",
    "packed_model_inputs",
    "packed_visibility",
    "packing_unsupported_reason",
]

PACKED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox"})
"""``config.model_type`` values verified to take a packed batch (tests compare it with the padded batch)."""

PACKED_ATTENTION = frozenset({"sdpa", "eager", "flex_attention"})
"""Attention implementations that honour a custom mask."""


def packing_unsupported_reason(base: nn.Module) -> str | None:
    """Why a ``transformers`` model (unwrapped from peft) cannot run a packed batch (``None`` when it can)."""
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in PACKED_MODEL_TYPES:
        return f"model type {model_type!r} is not among those packing is verified on ({sorted(PACKED_MODEL_TYPES)})"
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in PACKED_ATTENTION:
        return (
            f"its attention implementation {implementation!r} takes no custom mask (packing needs one of "
            f"{sorted(PACKED_ATTENTION)})"
        )
    if "position_ids" not in inspect.signature(base.forward).parameters:
        return f"{type(base).__name__}.forward takes no `position_ids`"
    return None


def packed_visibility(
    segment_ids: Tensor, branch_ids: Tensor, position_ids: Tensor, sliding_window: int | None = None
) -> Tensor:
    """Which key each query sees, as a boolean ``(R, 1, L, L)`` tensor (``[r, 0, q, k]``).

    Query ``q`` sees key ``k`` iff same segment, ``k <= q``, and ``branch_k`` is 0 (prompt) or ``branch_q``; with a
    sliding window also ``position_q - position_k < sliding_window``. Padding (segment ``-1``, branch ``-1``) sees the
    padding before it, so no query sees nothing.

    Args:
        segment_ids: ``(R, L)``.
        branch_ids: ``(R, L)``.
        position_ids: ``(R, L)``.
        sliding_window: the attention window, if any.

    Example:
        >>> seg, branch = torch.tensor([[0, 0, 0, 0, -1]]), torch.tensor([[0, 1, 2, 2, -1]])
        >>> packed_visibility(seg, branch, torch.tensor([[0, 1, 1, 2, 0]]))[0, 0].int().tolist()
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    """
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    query_branch, key_branch = branch_ids[:, :, None], branch_ids[:, None, :]
    visible = (
        (segment_ids[:, :, None] == segment_ids[:, None, :])
        & causal
        & ((key_branch == 0) | (key_branch == query_branch))
    )
    if sliding_window is not None:
        visible &= position_ids[:, :, None] - position_ids[:, None, :] < sliding_window
    return visible[:, None]


def _mask_mod(segment_ids: Tensor, branch_ids: Tensor, position_ids: Tensor, sliding_window: int | None) -> Any:
    """FlexAttention's ``mask_mod(b, h, q, k)`` of :func:`packed_visibility`."""

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        branch_q, branch_k = branch_ids[b, q], branch_ids[b, k]
        visible = (segment_ids[b, q] == segment_ids[b, k]) & (k <= q) & ((branch_k == 0) | (branch_k == branch_q))
        if sliding_window is not None:
            visible = visible & (position_ids[b, q] - position_ids[b, k] < sliding_window)
        return visible

    return mask_mod


def packed_attention_mask(
    batch: dict[str, Tensor], implementation: str, dtype: torch.dtype = torch.float32, sliding_window: int | None = None
) -> Any:
    """The packed batch's mask for one attention implementation.

    Args:
        batch: a packed batch (``segment_ids``, ``branch_ids``, ``position_ids`` ``(R, L)``).
        implementation: ``"sdpa"``, ``"eager"`` or ``"flex_attention"``.
        dtype: the additive mask's dtype (eager attention: the model's dtype).
        sliding_window: the attention window, if any.

    Returns:
        A boolean (sdpa) or additive (eager) ``(R, 1, L, L)`` tensor, or a ``BlockMask`` (flex_attention).

    Raises:
        ValueError: for another implementation.
    """
    segment_ids, branch_ids, position_ids = batch["segment_ids"], batch["branch_ids"], batch["position_ids"]
    if implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        rows, length = segment_ids.shape
        mask_mod = _mask_mod(segment_ids, branch_ids, position_ids, sliding_window)
        device = segment_ids.device
        # compiled off CPU (as transformers builds its own block masks); eager on CPU, where compiling costs more
        return create_block_mask(mask_mod, rows, None, length, length, device=device, _compile=device.type != "cpu")
    visible = packed_visibility(segment_ids, branch_ids, position_ids, sliding_window)
    if implementation == "sdpa":
        return visible
    if implementation == "eager":
        return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(
            ~visible, torch.finfo(dtype).min
        )
    raise ValueError(
        f"No packed mask for attention implementation {implementation!r}; expected {sorted(PACKED_ATTENTION)}."
    )


def packed_model_inputs(base: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
    """``input_ids``, ``position_ids`` and ``attention_mask`` of a packed batch for a model's forward.

    The mask follows the model's attention implementation and sliding window: a dict by layer type when its layers
    differ (``config.layer_types``), as ``transformers`` models with mixed layers accept.

    Args:
        base: the ``transformers`` model (unwrapped from peft), for its config and dtype.
        batch: a packed batch.
    """
    config = base.config
    implementation = config._attn_implementation
    dtype = getattr(base, "dtype", torch.float32)
    dtype = dtype if dtype.is_floating_point else torch.float32
    window = getattr(config, "sliding_window", None)
    layer_types = set(getattr(config, "layer_types", None) or ())
    if "sliding_attention" in layer_types:  # a mask per layer type, as the model builds them itself
        mask: Any = {
            kind: packed_attention_mask(batch, implementation, dtype, window if kind == "sliding_attention" else None)
            for kind in layer_types
        }
    else:
        windowed = config.model_type == "mistral" and window is not None  # Mistral windows every layer
        mask = packed_attention_mask(batch, implementation, dtype, window if windowed else None)
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "attention_mask": mask}
