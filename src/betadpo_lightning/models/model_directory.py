"""What a ``transformers`` model directory written by this library holds, to replace one without losing other files.

Both the exporter and the SFT module's ``save_pretrained`` write a whole directory at once (through
:func:`~betadpo_lightning.atomic.atomic_directory`) and so replace an earlier one; they refuse a directory that holds
anything else, naming it, rather than delete it.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

__all__ = ["MODEL_DIRECTORY_FILES", "foreign_entries"]

MODEL_DIRECTORY_FILES = (
    # the model's (transformers' save_pretrained), the adapter's (peft's, with its model card README.md)
    *("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors"),
    *("model.safetensors.index.json", "adapter_config.json", "adapter_model.safetensors", "README.md"),
    # the tokenizer's, whatever its kind
    *("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json"),
    *("vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "*.tiktoken", "chat_template.jinja"),
    *("chat_template.json", "additional_chat_templates"),
)
"""Names (``fnmatch`` patterns) of what a model directory holds: the only entries a new one may replace."""


def foreign_entries(directory: Path) -> list[str]:
    """The names of the entries of ``directory`` that no model directory holds, sorted (``[]`` if it is missing).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("config.json", "model.safetensors", "notes.txt"):
        ...     (folder / name).touch()
        >>> foreign_entries(folder)
        ['notes.txt']
    """
    if not directory.is_dir():
        return []
    return sorted(
        entry.name
        for entry in directory.iterdir()
        if not any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in MODEL_DIRECTORY_FILES)
    )
