"""A preference datamodule over one local file, without a validation split, and a row that always loads."""

from __future__ import annotations

from pathlib import Path

from betadpo_lightning.data import PreferenceDataModule

GOOD = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}


def file_module(path: Path, tokenizer: Path, tmp_path: Path, **kwargs) -> PreferenceDataModule:
    """A datamodule of the file ``path`` with ``tokenizer``, caching under ``tmp_path``."""
    return PreferenceDataModule(
        dataset=str(path), tokenizer=str(tokenizer), cache_dir=str(tmp_path / "cache"), val_split=None, **kwargs
    )


def ready_file_module(path: Path, tokenizer: Path, tmp_path: Path, **kwargs) -> PreferenceDataModule:
    """:func:`file_module`, prepared and set up for ``fit``."""
    module = file_module(path, tokenizer, tmp_path, **kwargs)
    module.prepare_data()
    module.setup("fit")
    return module
