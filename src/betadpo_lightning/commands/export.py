"""Export a trained ``PreferenceModule`` checkpoint as a ``transformers`` model directory, or as a peft adapter.

Usage (also installed as the ``betadpo-export`` command)::

    python -m betadpo_lightning.commands.export --ckpt_path runs/quickstart/checkpoints/last.ckpt --output_dir exported/

``--ckpt_path`` is any checkpoint of :class:`~betadpo_lightning.training.module.PreferenceModule`: a single file (one
device
or DDP) or the folder ``ModelParallelStrategy`` (FSDP2) writes, which is read in one process. The output directory
holds the policy (``model.safetensors``, ``config.json``, ``generation_config.json``) and the tokenizer, and loads
with ``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)``. The reference model
is never part of a checkpoint nor of an export.

A LoRA run exports its adapters by default (``adapter_config.json``, ``adapter_model.safetensors``, loadable with
``peft.AutoPeftModelForCausalLM.from_pretrained(DIR)`` or ``PeftModel.from_pretrained(base, DIR)``), and with
``--merge_lora`` the base with the adapters merged in, as a plain model directory. The base is always rebuilt
unquantised (a QLoRA run merges into the full-precision base).

The tokenizer is ``--tokenizer`` if given, else the one the run recorded (see :mod:`~.run_tokenizer`);
without one the model is written alone, with a warning. Weights are written in ``--dtype`` (default: the dtype the
checkpoint stores the policy in), and never when any of them is NaN or infinite. The output directory must be empty
or absent; ``--overwrite`` replaces an earlier export there (the export is written beside it first and moved into
place at the end), and refuses a directory holding anything an export does not write (see :data:`EXPORT_FILES`),
naming those files, rather than delete them.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from betadpo_lightning.atomic import atomic_directory
from betadpo_lightning.commands.export_summary import ExportSummary
from betadpo_lightning.commands.run_tokenizer import FoundTokenizer, TokenizerError, find_tokenizer
from betadpo_lightning.models.model_directory import MODEL_DIRECTORY_FILES, foreign_entries
from betadpo_lightning.models.policy_checkpoint import (
    CheckpointError,
    adapters_only,
    policy_weights_dtype,
    read_policy_checkpoint,
)

__all__ = ["DTYPES", "EXPORT_FILES", "ExportError", "export_checkpoint", "main"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

EXPORT_FILES = MODEL_DIRECTORY_FILES
"""Names (``fnmatch`` patterns) of what an export writes: the only entries ``--overwrite`` replaces."""

_LOAD_OVERRIDES = {"quantization": None, "gradient_checkpointing": False, "dropout": True, "attn_implementation": None}
"""Policy options that only matter for training: the exported config keeps the model's own dropout and cache
settings, and the base of a QLoRA run is rebuilt unquantised."""


class ExportError(ValueError):
    """An export that cannot be done as asked; the message names the file or option and the fix."""


class ExportWarning(UserWarning):
    """Something the export could not include (the tokenizer)."""


def export_checkpoint(
    ckpt_path: str | Path,
    output_dir: str | Path,
    dtype: str | None = None,
    tokenizer: str | None = None,
    merge_lora: bool = False,
    overwrite: bool = False,
) -> ExportSummary:
    """Write the policy of a ``PreferenceModule`` checkpoint (and its tokenizer) as a ``transformers`` directory.

    Args:
        ckpt_path: a checkpoint file, or a sharded checkpoint folder (FSDP2).
        output_dir: the directory to write; absent or empty unless ``overwrite``.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (``None``: the dtype of the stored policy).
        tokenizer: a hub name or folder of the tokenizer (``None``: the one the run recorded).
        merge_lora: merge the LoRA adapters into the base and write a full model.
        overwrite: replace an earlier export in ``output_dir`` (refused when it holds other files).

    Returns:
        What was written where.

    Raises:
        CheckpointError: for a file or folder that is not a ``PreferenceModule`` checkpoint.
        ExportError: for a non-empty ``output_dir`` without ``overwrite``, one holding files no export writes, a
            non-finite weight, or LoRA options that do not fit the checkpoint.
        TokenizerError: when ``tokenizer`` cannot be loaded or has more tokens than the policy's vocabulary.
    """
    ckpt_path, output = Path(ckpt_path), Path(output_dir)
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype}: expected one of {sorted(DTYPES)}")
    _check_output_dir(output, overwrite)
    checkpoint = read_policy_checkpoint(ckpt_path)
    _check_lora_options(checkpoint, ckpt_path, merge_lora)
    _check_finite(checkpoint["state_dict"].items(), ckpt_path)
    with atomic_directory(output) as staging:  # written beside `output`, which it replaces once complete
        policy = _load_policy(checkpoint, staging, dtype)
        model = policy.merge_and_unload() if merge_lora else policy
        if dtype is not None:
            model = model.to(DTYPES[dtype])
        _check_finite(itertools.chain(model.named_parameters(), model.named_buffers()), ckpt_path, dtype)
        rows = int(model.get_input_embeddings().weight.shape[0])
        found = find_tokenizer(checkpoint, ckpt_path, rows, tokenizer)
        summary = _write(model, found, staging, output, ckpt_path, merge_lora)
    if found.tokenizer is None:
        warnings.warn(
            f"No tokenizer written to {output}: {found.source}. Pass --tokenizer NAME_OR_DIR (the tokenizer the "
            "policy was trained with) to include it.",
            ExportWarning,
            stacklevel=2,
        )
    return summary


def _check_output_dir(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ExportError(f"--output_dir {output} is a file; give a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ExportError(f"--output_dir {output} is not empty; pass --overwrite to replace its contents")
    others = foreign_entries(output)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ExportError(
            f"--output_dir {output} holds files that an export does not write: {shown}; --overwrite replaces an "
            "earlier export only: move those files away, or export to another folder"
        )


def _check_lora_options(checkpoint: dict[str, Any], ckpt_path: Path, merge_lora: bool) -> None:
    hparams = checkpoint["hyper_parameters"]
    if merge_lora and hparams.get("lora") is None:
        raise ExportError(f"--merge_lora: {ckpt_path} holds no LoRA adapters (trained with `lora: null`); omit it")
    if hparams.get("lora") is not None and not merge_lora and hparams.get("model_name_or_path") is None:
        raise ExportError(
            f"{ckpt_path} trained LoRA adapters on a randomly initialised `model_config` policy, which an adapter "
            "directory cannot name as its base; pass --merge_lora to export the merged model"
        )


def _load_policy(checkpoint: dict[str, Any], staging: Path, dtype: str | None) -> nn.Module:
    """The trained policy, built by ``PreferenceModule.load_from_checkpoint`` (the policy only, no reference).

    The policy is built in ``dtype``, else in the dtype its weights are stored in (an adapters-only checkpoint: the
    base's own), so that loading the weights changes none of them.
    """
    from betadpo_lightning.training.module import PreferenceModule

    overrides: dict[str, Any] = dict(_LOAD_OVERRIDES)
    stored = None if adapters_only(checkpoint) else policy_weights_dtype(checkpoint)
    names = {value: key for key, value in DTYPES.items()}
    if dtype is not None or stored in names:
        overrides["dtype"] = dtype or names[stored]
    if checkpoint["hyper_parameters"].get("quantization") is not None:  # the base is rebuilt unquantised: drop
        # the quantisation state its frozen layers kept (bitsandbytes' absmax, quant_map, SCB, ... under base_layer)
        state = {key: value for key, value in checkpoint["state_dict"].items() if ".base_layer." not in key}
        checkpoint = {**checkpoint, "state_dict": state}
    file = staging / "policy.ckpt"  # the policy's part of the checkpoint, in the single-file layout; a scratch
    torch.save(checkpoint, file)  # file inside the staging folder (itself written atomically), deleted below
    try:
        module = PreferenceModule.load_from_checkpoint(file, map_location="cpu", weights_only=True, **overrides)
    finally:
        file.unlink()
    assert module.policy is not None
    return module.policy.eval()


def _check_finite(tensors: Iterable[tuple[str, Any]], ckpt_path: Path, dtype: str | None = None) -> None:
    """Refuse non-finite values: the checkpoint's as stored, then the model's as it is written (in ``dtype``)."""
    bad = [
        str(name)
        for name, t in tensors
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        cast = f" in {dtype} (values beyond its range become infinite; export in float32 or bfloat16)" if dtype else ""
        raise ExportError(
            f"Refusing to export {ckpt_path}: {len(bad)} weight tensors are not finite{cast}: {', '.join(bad[:3])}"
        )


def _write(
    model: Any, found: FoundTokenizer, staging: Path, output: Path, ckpt_path: Path, merge_lora: bool
) -> ExportSummary:
    adapter = hasattr(model, "peft_config")
    if adapter:
        _point_adapter_at_base(model)
    elif found.tokenizer is not None:
        _complete_generation_config(model, found.tokenizer)
    model.save_pretrained(str(staging))
    model_files = sorted(path.name for path in staging.iterdir())
    if found.tokenizer is not None:
        found.tokenizer.save_pretrained(str(staging))
    tokenizer_files = sorted(path.name for path in staging.iterdir() if path.name not in model_files)
    base = model.peft_config[model.active_adapter].base_model_name_or_path if adapter else None
    kind = "LoRA adapter" if adapter else "merged LoRA model" if merge_lora else "model"
    return ExportSummary.of(model, kind, ckpt_path, output, staging, model_files, tokenizer_files, found.source, base)


def _point_adapter_at_base(model: Any) -> None:
    """Record the base of a peft adapter as an absolute path when it is a local directory (else the hub name)."""
    config = model.peft_config[model.active_adapter]
    base = config.base_model_name_or_path
    if base and Path(base).is_dir():
        config.base_model_name_or_path = str(Path(base).resolve())


def _complete_generation_config(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the generation config the tokenizer's pad and EOS ids where it has none (``generate`` then pads)."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    if config.eos_token_id is None and tokenizer.eos_token_id is not None:
        config.eos_token_id = tokenizer.eos_token_id


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="betadpo-export",
        description="Export the policy of a PreferenceModule checkpoint (a file, or an FSDP2 checkpoint folder) as "
        "a transformers model directory with its tokenizer, or as a peft adapter directory for a LoRA run.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint file, or sharded (FSDP2) checkpoint folder")
    parser.add_argument("--output_dir", required=True, help="directory to write (absent or empty)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="dtype of the written weights (default: as stored)")
    parser.add_argument("--tokenizer", help="hub name or folder of the tokenizer (default: the one the run used)")
    parser.add_argument("--merge_lora", action="store_true", help="LoRA runs: write the merged model, not adapters")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier export in --output_dir (nothing else is deleted)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the export command.

    Args:
        argv: the arguments (``None``: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when the export was refused (the reason is printed to stderr).
    """
    args = _parser().parse_args(argv)
    try:
        summary = export_checkpoint(
            args.ckpt_path, args.output_dir, args.dtype, args.tokenizer, args.merge_lora, args.overwrite
        )
    except (CheckpointError, ExportError, TokenizerError) as error:
        print(f"betadpo-export: error: {error}", file=sys.stderr)
        return 1
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
