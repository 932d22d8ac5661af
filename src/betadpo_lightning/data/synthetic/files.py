"""Write the synthetic dataset to disk, beside its tokenizer.

Layout: ``<root>/synthetic-<config digest>/`` holds ``train.jsonl``, ``validation.jsonl`` (absent when
``validation_size`` is 0) and ``tokenizer/`` (loadable with ``AutoTokenizer.from_pretrained``). The folder is
written under a temporary name and renamed into place, so it is either complete or absent, also when several
processes prepare it at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from betadpo_lightning.atomic import atomic_directory
from betadpo_lightning.data.synthetic.config import SyntheticConfig
from betadpo_lightning.data.synthetic.generate import SplitName, generate_split
from betadpo_lightning.data.synthetic.tokenizer import build_synthetic_tokenizer

TOKENIZER_FOLDER = "tokenizer"


def synthetic_dir(config: SyntheticConfig, root: str | os.PathLike[str]) -> Path:
    """Folder of the dataset for ``config`` under ``root`` (whether or not it was written yet).

    Args:
        config: Dataset options.
        root: Cache folder.

    Returns:
        ``<root>/synthetic-<config.digest()>``.
    """
    return Path(root) / f"synthetic-{config.digest()}"


def split_files(config: SyntheticConfig, folder: Path) -> dict[SplitName, str]:
    """Data files of the dataset's splits, as ``datasets.load_dataset("json", data_files=...)`` takes them.

    Args:
        config: Dataset options.
        folder: The dataset's folder (see :func:`synthetic_dir`).

    Returns:
        Split name → JSONL path; ``"validation"`` only when ``config.validation_size > 0``.
    """
    splits: list[SplitName] = ["train", "validation"] if config.validation_size > 0 else ["train"]
    return {split: str(folder / f"{split}.jsonl") for split in splits}


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_synthetic_dataset(config: SyntheticConfig, root: str | os.PathLike[str]) -> Path:
    """Generate the dataset and its tokenizer under ``root``, unless they are already there.

    Args:
        config: Dataset options.
        root: Cache folder (created if missing).

    Returns:
        The dataset's folder.
    """
    target = synthetic_dir(config, root)
    if target.is_dir():
        return target
    with atomic_directory(target, replace=False) as staging:  # a concurrent writer may finish first: kept
        for split, path in split_files(config, staging).items():
            _write_jsonl(Path(path), generate_split(config, split))
        build_synthetic_tokenizer().save_pretrained(str(staging / TOKENIZER_FOLDER))
    return target
