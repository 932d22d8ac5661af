"""Hard checks of a training step: the batch layout, finite margins, and the reference's identity."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from betadpo_lightning.data.packing import check_packed_batch, is_packed
from betadpo_lightning.distributed import any_rank, gather_texts
from betadpo_lightning.models.sharding import local_shard

__all__ = ["check_batch", "check_token_ids", "check_weights_finite", "reference_mismatch", "weights_fingerprint"]


def check_batch(batch: dict[str, Tensor]) -> None:
    """Raise unless ``batch`` is the ``(2B, T)`` preference batch (chosen rows first, then rejected) or a packed one.

    Raises:
        KeyError: a key is missing.
        ValueError: wrong shapes.
    """
    if is_packed(batch):  # the packed layout of betadpo_lightning.data.packing
        check_packed_batch(batch)
        return
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
        FloatingPointError: on every rank, naming the parameters at fault (with several ranks, per rank).
    """
    if model is None:
        return
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(local_shard(p.detach())).all())]
    device = next(model.parameters()).device
    if any_rank(strategy, bool(bad), device):
        faults = gather_texts(strategy, str(bad[:5]) if bad else "", device)  # only when something is wrong
        where = faults[0] if len(faults) == 1 else "; ".join(f"rank {r}: {t}" for r, t in enumerate(faults) if t)
        raise FloatingPointError(f"Refusing to write a checkpoint with non-finite weights ({where}).")


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


def check_token_ids(module: Any) -> None:
    """Once per fit: every token id of the data fits the policy's and the reference's embeddings.

    Needs a datamodule with a ``token_id_beyond(vocab_size)`` method, such as
    :class:`~betadpo_lightning.data.PreferenceDataModule`.
    """
    datamodule = getattr(module.trainer, "datamodule", None)
    check = getattr(datamodule, "token_id_beyond", None)
    if check is None:
        return
    for name, model in (("policy", module.policy), ("reference model", module.reference_model)):
        if model is None:
            continue
        rows = int(model.get_input_embeddings().weight.shape[0])
        found = check(rows)
        if found is not None:
            tokenizer = getattr(datamodule, "tokenizer", None)
            size = f" of {len(tokenizer)} tokens" if tokenizer is not None else ""
            raise ValueError(
                f"{found} is outside the vocabulary of the {name}: its input embedding has {rows} rows, but the "
                f"data was tokenized with a tokenizer{size}; use the model's own tokenizer or resize the "
                "embeddings."
            )
