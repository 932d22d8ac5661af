"""What an export wrote where: the lines ``betadpo-export`` prints at its end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["ExportSummary", "human_size"]


def human_size(size: int) -> str:
    """A byte count in decimal units.

    Example:
        >>> human_size(999), human_size(86_912), human_size(1_400_000_000)
        ('999 B', '86.9 kB', '1.4 GB')
    """
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class ExportSummary:
    """The files of an export and what they hold.

    Args:
        checkpoint: the exported checkpoint.
        output_dir: where the files are.
        kind: ``"model"``, ``"merged LoRA model"`` or ``"LoRA adapter"``.
        architecture: the model's class (of the base, for an adapter).
        parameters: number of written parameters (the adapters' only, for an adapter).
        dtype: dtype of the written weights.
        model_files: file name → size in bytes, of the model's (or adapter's) files.
        tokenizer_files: file name → size in bytes, of the tokenizer's files (empty without a tokenizer).
        tokenizer_source: where the tokenizer came from, or why there is none.
        base: the base model an adapter names (``None`` for full models).
    """

    checkpoint: Path
    output_dir: Path
    kind: str
    architecture: str
    parameters: int
    dtype: torch.dtype
    model_files: dict[str, int]
    tokenizer_files: dict[str, int]
    tokenizer_source: str
    base: str | None = None

    @classmethod
    def of(
        cls,
        model: nn.Module,
        kind: str,
        checkpoint: Path,
        output_dir: Path,
        written: Path,
        model_files: list[str],
        tokenizer_files: list[str],
        tokenizer_source: str,
        base: str | None,
    ) -> ExportSummary:
        """Describe ``model`` as written into the folder ``written`` (which becomes ``output_dir``)."""
        adapter = base is not None or kind == "LoRA adapter"
        inner: Any = model.get_base_model() if adapter else model  # type: ignore[operator]
        params = [p for name, p in model.named_parameters() if not adapter or "lora_" in name]
        return cls(
            checkpoint=checkpoint,
            output_dir=output_dir,
            kind=kind,
            architecture=type(inner).__name__,
            parameters=sum(p.numel() for p in params),
            dtype=params[0].dtype if params else torch.float32,
            model_files={name: (written / name).stat().st_size for name in model_files},
            tokenizer_files={name: (written / name).stat().st_size for name in tokenizer_files},
            tokenizer_source=tokenizer_source,
            base=base,
        )

    @property
    def total_size(self) -> int:
        """Bytes written in all."""
        return sum(self.model_files.values()) + sum(self.tokenizer_files.values())

    def describe(self) -> str:
        """The report printed at the end of an export (a few lines)."""
        dtype = str(self.dtype).removeprefix("torch.")
        what = f"{self.architecture}, {self.parameters:,} parameters, {dtype}"
        if self.base is not None:
            what = f"LoRA of {self.architecture} at {self.base}, {self.parameters:,} adapter parameters, {dtype}"
        lines = [
            f"Exported the {self.kind} of {self.checkpoint} to {self.output_dir} ({human_size(self.total_size)}):",
            f"  {'adapter' if self.base is not None else 'model':<9} {what}: {_files(self.model_files)}",
        ]
        if self.tokenizer_files:
            lines.append(f"  tokenizer {self.tokenizer_source}: {_files(self.tokenizer_files)}")
        else:
            lines.append(f"  tokenizer none written ({self.tokenizer_source}); pass --tokenizer to include it")
        where = f'"{self.output_dir}"'
        if self.base is not None:
            lines.append(f"Load it with peft.AutoPeftModelForCausalLM.from_pretrained({where}).")
        else:
            tokenizer = f" and AutoTokenizer.from_pretrained({where})" if self.tokenizer_files else ""
            lines.append(f"Load it with AutoModelForCausalLM.from_pretrained({where}){tokenizer}.")
        if self.tokenizer_files:
            lines.append(f"Sample from it: python -m betadpo_lightning.commands.sample --model {where} --prompt '...'")
        return "\n".join(lines)


def _files(files: dict[str, int]) -> str:
    return ", ".join(f"{name} ({human_size(size)})" for name, size in sorted(files.items()))
