"""Load the raw splits of a preference dataset through ``datasets.load_dataset``, and its tokenizer.

A source is one of:

* a local file (``.json``, ``.jsonl``, ``.parquet``, ``.csv``, optionally ``.gz``-compressed): loaded as its
  ``"train"`` split;
* a local folder: ``datasets`` infers the splits from the file names (e.g. ``train.jsonl``, ``validation.jsonl``);
* a builder name such as ``"json"``, ``"parquet"`` or ``"csv"`` together with ``data_files``;
* a dataset name on the Hugging Face Hub, with an optional config name.

The splits of a ``data_files`` mapping (and of a single file) are loaded one at a time, so that the column types of
one split never change the values of another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets
from lightning.pytorch.utilities import rank_zero_warn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from betadpo_lightning.data.errors import PreferenceDataError

DataFiles = str | Sequence[str] | Mapping[str, str | Sequence[str]]

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def builder_for_file(path: Path) -> str:
    """The ``datasets`` builder that reads a local file, from its suffix.

    Args:
        path: The file.

    Returns:
        ``"json"``, ``"parquet"`` or ``"csv"``.

    Raises:
        PreferenceDataError: For any other suffix.

    Examples:
        >>> builder_for_file(Path("pairs.jsonl.gz"))
        'json'
    """
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    builder = FILE_BUILDERS.get(suffixes[-1]) if suffixes else None
    if builder is None:
        raise PreferenceDataError(
            f"cannot tell the format of '{path}': expected one of the suffixes {sorted(FILE_BUILDERS)} "
            "(optionally followed by .gz)"
        )
    return builder


def load_source(
    dataset: str,
    config_name: str | None = None,
    data_files: DataFiles | None = None,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Load every split of a source, through the ``datasets`` cache.

    Args:
        dataset: A local file or folder, a ``datasets`` builder name used with ``data_files``, or a Hub dataset.
        config_name: The dataset's config (subset) name, if any.
        data_files: Files to read with the builder or Hub dataset named by ``dataset``.
        cache_dir: Cache folder of ``datasets`` (its default when ``None``).

    Returns:
        The splits by name.

    Raises:
        PreferenceDataError: If a local file has an unknown suffix or the source holds no split.
    """
    path = Path(dataset)
    if data_files is None and path.is_file():
        dataset, data_files = builder_for_file(path), {"train": str(path)}
    if isinstance(data_files, Mapping):
        # One split at a time: loaded together, a column of mixed types in one split would be cast to the type of
        # the others (a mixed JSON column becomes JSON text), silently changing the values.
        loaded = datasets.DatasetDict(
            {
                split: datasets.load_dataset(dataset, config_name, data_files={split: files}, cache_dir=cache_dir)[
                    split
                ]
                for split, files in data_files.items()
            }
        )
    else:
        loaded = datasets.load_dataset(dataset, config_name, data_files=data_files, cache_dir=cache_dir)
    if not isinstance(loaded, datasets.DatasetDict) or not loaded:
        raise PreferenceDataError(f"expected '{dataset}' to load as named splits, got {type(loaded).__name__}")
    return loaded


def pick_split(splits: datasets.DatasetDict, name: str, source: str) -> datasets.Dataset:
    """Return split ``name`` or raise, listing the available ones.

    Args:
        splits: The loaded splits.
        name: The requested split.
        source: The source's name (for the error message).

    Returns:
        The split.

    Raises:
        PreferenceDataError: If the split does not exist.
    """
    if name not in splits:
        raise PreferenceDataError(f"dataset '{source}' has no split '{name}'; available splits: {sorted(splits)}")
    return splits[name]


def load_tokenizer(
    name_or_path: str, kwargs: Mapping[str, object] | None = None, warn: bool = True
) -> PreTrainedTokenizerBase:
    """Load a tokenizer and give it a pad token if it has none.

    A tokenizer without a pad token gets its EOS token as pad token (padding positions are masked out, so the id
    only fills space), with a warning.

    Args:
        name_or_path: Hub name or local folder of the tokenizer.
        kwargs: Extra arguments of ``AutoTokenizer.from_pretrained``.
        warn: Whether to warn about a pad token set to EOS.

    Returns:
        The tokenizer, with a pad token.

    Raises:
        PreferenceDataError: If the tokenizer has neither a pad token nor an EOS token.
    """
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **dict(kwargs or {}))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PreferenceDataError(f"tokenizer '{name_or_path}' has neither a pad token nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        if warn:
            rank_zero_warn(
                f"tokenizer '{name_or_path}' has no pad token; using its EOS token {tokenizer.eos_token!r} for padding"
            )
    return tokenizer
