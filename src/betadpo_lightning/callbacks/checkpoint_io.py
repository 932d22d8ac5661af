"""Checkpoint files written atomically and read with checks: Lightning's ``CheckpointIO`` for the library's runs.

Lightning's :class:`~lightning.fabric.plugins.io.torch_io.TorchCheckpointIO` writes through an ``fsspec`` transaction
whose temporary file is in the system's temporary folder: a checkpoint folder on another filesystem gets a copy, not a
rename, and nothing is ``fsync``-ed, so a kill or a full disk can leave a truncated ``last.ckpt``. It reads with a bare
``torch.load``: a truncated file raises ``EOFError``, a foreign one ``KeyError: 'pytorch-lightning_version'``, and
flipped bytes load silently as other numbers. :class:`PreferenceCheckpointIO` writes local files with
:func:`~betadpo_lightning.atomic.atomic_write` and checks what it reads (:func:`check_checkpoint`), naming the file in a
:class:`~betadpo_lightning.models.policy_checkpoint.CheckpointError`. Remote paths are left to Lightning.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from typing_extensions import override

from betadpo_lightning.atomic import atomic_write
from betadpo_lightning.models.policy_checkpoint import CheckpointError, damaged_record, load_checkpoint_file

__all__ = ["PreferenceCheckpointIO", "check_checkpoint", "first_nonfinite", "use_checked_io"]

CHECKED_ENTRIES = ("state_dict", "optimizer_states")
"""The checkpoint entries whose floating tensors must be finite: the weights and the optimizer state (the other
entries may hold infinities on purpose, e.g. ``ModelCheckpoint``'s initial ``kth_value``)."""

_CHUNK = 1 << 24
"""Elements per ``isfinite`` pass over a tensor that failed the quick test (bounded scratch memory)."""


def _finite(tensor: torch.Tensor) -> bool:
    """Whether every element is finite: one float64 sum (NaN and ±inf propagate), confirmed element-wise if not."""
    if tensor.numel() == 0:
        return True
    flat = tensor.detach().reshape(-1)
    if bool(torch.isfinite(flat.sum(dtype=torch.float64))):
        return True
    return all(bool(torch.isfinite(chunk).all()) for chunk in flat.split(_CHUNK))  # a finite sum that overflowed


def _tensors(value: Any, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{where}[{index}]")


def first_nonfinite(checkpoint: Any, entries: tuple[str, ...] = CHECKED_ENTRIES) -> str | None:
    """The key of the first floating tensor under ``entries`` of ``checkpoint`` holding NaN or ±inf, or ``None``.

    Example:
        >>> first_nonfinite({"state_dict": {"w": torch.ones(2)}, "optimizer_states": [{"state": {0: {
        ...     "exp_avg_sq": torch.tensor([1.0, float("nan")])}}}]})
        'optimizer_states[0].state.0.exp_avg_sq'
    """
    checked = {key: checkpoint[key] for key in entries if key in checkpoint}
    for where, tensor in _tensors(checked, ""):
        if (tensor.is_floating_point() or tensor.is_complex()) and not _finite(tensor):
            return where
    return None


def check_checkpoint(checkpoint: Any, path: _PATH) -> None:
    """Refuse a file that is not a Lightning checkpoint, holds a non-finite weight or optimizer value, or is damaged.

    Args:
        checkpoint: what ``torch.load`` returned.
        path: the file (local), named in errors.

    Raises:
        CheckpointError: naming the file, and the first bad key or damaged record.
    """
    if not isinstance(checkpoint, dict) or not {"state_dict", "pytorch-lightning_version"} <= checkpoint.keys():
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (it has no `state_dict` or `pytorch-lightning_version` entry)"
        )
    bad = first_nonfinite(checkpoint)
    if bad is not None:
        raise CheckpointError(f"{path} is damaged: {bad} holds NaN or infinite values; resume from another checkpoint")
    record = damaged_record(path)
    if record is not None:
        raise CheckpointError(
            f"{path} is damaged: its record {record} does not match its checksum; resume from another checkpoint"
        )


def _local(path: _PATH) -> bool:
    return isinstance(get_filesystem(path), LocalFileSystem)


class PreferenceCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local writes and checked reads.

    A local checkpoint is written to a temporary file beside it, ``fsync``-ed and renamed over it (the old file
    stays whole until then; nothing is left behind on failure). Reading refuses, naming the file: a file that is not
    a complete ``torch.save`` zip, one ``torch.load`` fails on, one that is not a Lightning checkpoint, a non-finite
    value in any floating tensor (weights, optimizer state), and records whose bytes fail their CRC-32 checksum.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_write(os.fspath(path), lambda file: torch.save(checkpoint, file))

    @override
    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if not _local(path):
            return super().load_checkpoint(path, map_location, weights_only)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        checkpoint = load_checkpoint_file(path, map_location=map_location, weights_only=weights_only)
        check_checkpoint(checkpoint, path)
        return checkpoint


def use_checked_io(strategy: Any) -> None:
    """Give ``strategy`` a :class:`PreferenceCheckpointIO` unless it was given a ``CheckpointIO`` of its own."""
    current = getattr(strategy, "_checkpoint_io", None)
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = PreferenceCheckpointIO()
