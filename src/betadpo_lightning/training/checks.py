"""Hard checks of a training step: the batch layout, finite margins, and the reference's identity."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["check_batch", "check_weights_finite", "reference_mismatch", "weights_fingerprint"]


def check_batch(batch: dict[str, Tensor]) -> None:
    """Raise unless ``batch`` is the ``(2B, T)`` preference batch (chosen rows first, then rejected).

    Raises:
        KeyError: a key is missing.
        ValueError: wrong shapes.
    """
    missing = [key for key in ("input_ids", "attention_mask", "labels") if key not in batch]
    if missing:
        raise KeyError(f"The batch lacks {missing}; expected the (2B, T) preference batch of PreferenceDataModule.")
    rows = batch["input_ids"].shape[0]
    if batch["input_ids"].dim() != 2 or rows % 2 or batch["labels"].shape != batch["input_ids"].shape:
        raise ValueError(
            f"Expected `input_ids` and `labels` of shape (2B, T) with chosen rows first; got "
            f"{tuple(batch['input_ids'].shape)} and {tuple(batch['labels'].shape)}."
        )


def check_weights_finite(model: nn.Module | None, strategy: Any = None) -> None:
    """Raise, on every rank together, if a weight of ``model`` is NaN or infinite (before a checkpoint is written).

    Args:
        model: the policy (sharded or not).
        strategy: the Trainer's strategy: its ``reduce`` (``"max"``) makes every rank agree; ``None``: this process.

    Raises:
        FloatingPointError: naming the parameters at fault on this rank.
    """
    if model is None:
        return
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(_local(p.detach())).all())]
    flag = torch.tensor([float(bool(bad))], device=next(model.parameters()).device)
    if strategy is not None:
        flag = strategy.reduce(flag, reduce_op="max")
    if float(flag.item()) > 0:
        raise FloatingPointError(
            f"Refusing to write a checkpoint with non-finite weights ({bad[:5] or 'on another rank'})."
        )


def _local(tensor: Tensor) -> Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def weights_fingerprint(model: nn.Module | None) -> Tensor | None:
    """``[Σ w, Σ w²]`` over the parameters in float64, or ``None`` for sharded (DTensor) or absent weights."""
    if model is None:
        return None
    total = torch.zeros(2, dtype=torch.float64)
    for param in model.parameters():
        if param.is_meta or type(param.data).__name__ == "DTensor":
            return None
        data = param.detach().to(torch.float64)
        total += torch.stack([data.sum(), (data * data).sum()]).cpu()
    return total


def reference_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why the reference of a checkpoint and the current one differ, or ``None`` when they agree.

    Args:
        saved: the checkpoint's record: ``provider`` (its repr), ``seed`` (``PL_GLOBAL_SEED`` when it was built)
            and ``fingerprint`` (:func:`weights_fingerprint`, or ``None``).
        current: the same record for the reference of this run.

    Returns:
        A message naming what differs, or ``None``.
    """
    old, new = saved.get("fingerprint"), current.get("fingerprint")
    if old is None or new is None or torch.allclose(old, new, rtol=1e-5, atol=1e-6):
        return None
    differences = [
        f"{label}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now"
        for key, label in (("provider", "provider"), ("seed", "seed_everything seed"))
        if saved.get(key) != current.get(key)
    ]
    cause = (
        "; ".join(differences)
        if differences
        else (
            "same provider and seed, so the reference weights themselves changed (another checkpoint at the same path, "
            "another dtype, or a random `model_config` initialisation that depends on more than the seed)"
        )
    )
    return (
        f"The reference model differs from the one the checkpoint was trained against ({cause}). Weight "
        f"fingerprint [Σw, Σw²]: {old.tolist()} in the checkpoint, {new.tolist()} now. Resume with the same "
        "reference; a randomly initialised `model_config` reference is the same only under the same seed."
    )
