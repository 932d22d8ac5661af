"""Reading a :class:`~betadpo_lightning.module.PreferenceModule` checkpoint in one process, whatever its layout.

Lightning writes a checkpoint either as one ``torch.save`` file (one device, DDP, FSDP with a full state dict) or,
under ``ModelParallelStrategy`` (FSDP2), as a folder in the ``torch.distributed.checkpoint`` format: ``.metadata`` and
one ``__<rank>_0.distcp`` file per rank hold the tensors (the ``state_dict`` and each ``optimizer_<i>``, sharded as
they were trained), and ``meta.pt`` (written by rank 0 with ``torch.save``) holds everything else: hyperparameters,
loops, callbacks. :func:`read_policy_checkpoint` reads either layout into the same dictionary: the hyperparameters,
the full (unsharded) weights of ``state_dict`` and the other metadata, without the optimizer and training-loop state.
Nothing is unpickled beyond plain data (``weights_only=True``), and no process group is needed.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "SHARDED_EXTRA_FILE",
    "CheckpointError",
    "adapters_only",
    "damaged_record",
    "first_line",
    "load_checkpoint_file",
    "policy_weights_dtype",
    "read_policy_checkpoint",
]

SHARDED_EXTRA_FILE = "meta.pt"
"""Lightning's file of the non-tensor part of a sharded checkpoint folder."""

POLICY_PREFIX = "policy."
"""State-dict prefix of the policy's weights."""

_TRAINING_STATE = ("optimizer_states", "lr_schedulers", "loops", "callbacks")
"""Checkpoint entries only a resumed fit needs."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as a ``PreferenceModule`` checkpoint; the message names the file."""


def read_policy_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a single-file or sharded (FSDP2 folder) ``PreferenceModule`` checkpoint into memory.

    Args:
        path: a ``.ckpt`` file, or a folder written by ``ModelParallelStrategy``.

    Returns:
        The checkpoint without its training state: ``state_dict`` (full tensors on the CPU, ``policy.*`` keys),
        ``hyper_parameters``, ``reference`` and the other metadata Lightning wrote (``datamodule_hyper_parameters``
        when the datamodule saved its own).

    Raises:
        CheckpointError: for a missing path, a file ``torch.load`` cannot read, a folder that is not a sharded
            checkpoint, or a checkpoint of another ``LightningModule``.
    """
    path = Path(path)
    if path.is_dir():
        checkpoint = _read_folder(path)
    elif path.is_file():
        checkpoint = _torch_load(path, path)
    else:
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    _check_preference_checkpoint(checkpoint, path)
    return {key: value for key, value in checkpoint.items() if key not in _TRAINING_STATE}


def adapters_only(checkpoint: Mapping[str, Any]) -> bool:
    """Whether the checkpoint holds only the LoRA adapters of the policy, not its frozen base.

    A LoRA policy loaded from ``model_name_or_path`` leaves its base out of checkpoints (it is rebuilt from there).
    """
    hparams = checkpoint["hyper_parameters"]
    return hparams.get("lora") is not None and hparams.get("model_name_or_path") is not None


def policy_weights_dtype(checkpoint: Mapping[str, Any]) -> torch.dtype | None:
    """The floating dtype that most of the policy's stored values have (by element count), or ``None`` without any."""
    counts: Counter[torch.dtype] = Counter()
    for key, value in checkpoint["state_dict"].items():
        if str(key).startswith(POLICY_PREFIX) and isinstance(value, torch.Tensor) and value.is_floating_point():
            counts[value.dtype] += value.numel()
    return counts.most_common(1)[0][0] if counts else None


def first_line(error: BaseException) -> str:
    r"""The error's type and the first line of its message, as the exporter's messages quote a cause.

    Example:
        >>> first_line(OSError("no such file\nmore detail"))
        'OSError: no such file'
        >>> first_line(ValueError())
        'ValueError'
    """
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def load_checkpoint_file(
    file: str | os.PathLike[str], checkpoint_path: str | os.PathLike[str] | None = None, **load_options: Any
) -> Any:
    """``torch.load`` of a checkpoint file, with a file it cannot read named in a :class:`CheckpointError`.

    Args:
        file: the file written by ``torch.save``.
        checkpoint_path: the checkpoint to name in errors (``None``: ``file``; a sharded folder names the folder).
        **load_options: ``torch.load`` options (``map_location``, ``weights_only``, ``mmap``).

    Returns:
        What ``torch.load`` returns.

    Raises:
        CheckpointError: for a file that is not a complete ``torch.save`` zip (truncated, or another format) or that
            ``torch.load`` fails on (damaged records, objects ``weights_only`` refuses).
    """
    file = Path(file)
    checkpoint_path = file if checkpoint_path is None else checkpoint_path
    if not zipfile.is_zipfile(file):  # what torch.save writes (Lightning never writes the legacy format)
        raise CheckpointError(
            f"{checkpoint_path} is not a checkpoint: {file.name} is not a complete file written by torch.save "
            "(truncated, damaged or another format)"
        )
    weights_only = load_options.get("weights_only")
    how = "torch.load" if weights_only is None else f"torch.load(weights_only={weights_only})"
    try:
        return torch.load(file, **load_options)
    except Exception as error:  # torch raises many types here: pickle, zip, runtime and OS errors
        raise CheckpointError(
            f"{checkpoint_path} is not a checkpoint that {how} can read ({first_line(error)})"
        ) from None


def damaged_record(file: str | os.PathLike[str]) -> str | None:
    """The first record of a ``torch.save`` zip whose bytes fail their CRC-32 checksum, or ``None`` when all pass.

    ``torch.load`` does not check these checksums: flipped bytes in a tensor load silently as other values.
    """
    try:
        with zipfile.ZipFile(file) as archive:
            return archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        return f"(unreadable: {first_line(error)})"


def _torch_load(file: Path, checkpoint_path: Path) -> Any:
    return load_checkpoint_file(file, checkpoint_path, map_location="cpu", mmap=True, weights_only=True)


def _read_folder(path: Path) -> dict[str, Any]:
    extra = path / SHARDED_EXTRA_FILE
    if not extra.is_file():
        raise CheckpointError(
            f"{path} is a folder but not a sharded Lightning checkpoint (it has no {SHARDED_EXTRA_FILE}); pass the "
            "checkpoint file or the folder that ModelParallelStrategy wrote"
        )
    checkpoint = _torch_load(extra, path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: {SHARDED_EXTRA_FILE} does not hold a Lightning checkpoint's metadata")
    checkpoint["state_dict"] = _read_sharded_state_dict(path)
    return checkpoint


def _read_sharded_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The full tensors of the ``state_dict`` entry of a ``torch.distributed.checkpoint`` folder, in this process.

    Only the model's tensors are read (not the optimizer's): empty tensors of the recorded shapes and dtypes are
    filled by ``torch.distributed.checkpoint.load`` without a process group, each from every rank's shard.
    """
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as error:  # a missing or unreadable .metadata file
        raise CheckpointError(f"{path} is not a torch.distributed.checkpoint folder ({first_line(error)})") from None
    planner_data = metadata.planner_data or {}
    state: dict[str, torch.Tensor] = {}
    for key, item in metadata.state_dict_metadata.items():
        where = planner_data.get(
            key
        )  # the nested path of a flattened key, e.g. ("state_dict", "policy.lm_head.weight")
        if where is None and key.startswith("state_dict."):
            where = ("state_dict", key[len("state_dict.") :])
        if (
            isinstance(item, TensorStorageMetadata)
            and where is not None
            and len(where) == 2
            and where[0] == "state_dict"
        ):
            state[str(where[1])] = torch.empty(item.size, dtype=item.properties.dtype)
    if state:
        with warnings.catch_warnings():  # one process on purpose, which torch reports as a guess
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            load({"state_dict": state}, storage_reader=FileSystemReader(str(path)), no_dist=True)
    return state


def _check_preference_checkpoint(checkpoint: Any, path: Path) -> None:
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it holds no `state_dict`)")
    hparams = checkpoint.get("hyper_parameters")
    has_policy = any(str(key).startswith(POLICY_PREFIX) for key in checkpoint["state_dict"])
    has_options = isinstance(hparams, Mapping) and {"model_name_or_path", "model_config"} <= hparams.keys()
    if not (has_policy and has_options and "reference" in checkpoint):
        raise CheckpointError(
            f"{path} is not a checkpoint of betadpo_lightning's PreferenceModule (no `policy.*` weights, policy "
            "options or reference record): a checkpoint of another LightningModule cannot be exported"
        )
