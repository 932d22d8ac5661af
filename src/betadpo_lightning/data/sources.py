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

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from datasets.data_files import DataFilesDict, get_data_patterns
from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
from lightning.pytorch.utilities import rank_zero_warn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from betadpo_lightning.data.errors import PreferenceDataError
from betadpo_lightning.data.files import BadLine, copy_without, csv_text_options, describe, find_bad_lines
from betadpo_lightning.data.row_origins import SplitOrigin, record_origin
from betadpo_lightning.models.hub import hub_errors, require_reachable

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


@dataclass(frozen=True)
class LoadedSource:
    """The raw splits of a source and the malformed lines skipped while reading them.

    Attributes:
        splits: the splits by name.
        skipped_lines: malformed lines skipped per split, by reason (``malformed_line``, ``invalid_utf8``,
            ``missing_fields``; ``on_bad_row="skip"``; only splits that had some).
    """

    splits: datasets.DatasetDict
    skipped_lines: dict[str, dict[str, int]] = field(default_factory=dict)


def load_source(
    dataset: str,
    config_name: str | None = None,
    data_files: DataFiles | None = None,
    cache_dir: str | None = None,
    on_bad_row: str = "error",
) -> LoadedSource:
    """Load every split of a source, through the ``datasets`` cache.

    Local CSV files are read with every column as text. Local files are scanned when reading them fails, when a
    string they hold is not valid UTF-8 (checked on the loaded Arrow data) and, for CSV, always (``datasets`` reads a
    record with too few fields silently, as empty strings): a malformed line (invalid JSON or UTF-8, not an object,
    an integer beyond 64 bits, a CSV record with the wrong number of fields) or an empty file raises a
    :class:`PreferenceDataError` naming the file and the line, or, under ``on_bad_row="skip"``, a copy without the
    malformed lines is read and the skipped lines are counted by reason. Where each row of a local split comes from
    is recorded for the messages about bad rows (:mod:`~betadpo_lightning.data.row_origins`).

    Args:
        dataset: A local file or folder, a ``datasets`` builder name used with ``data_files``, or a Hub dataset.
        config_name: The dataset's config (subset) name, if any.
        data_files: Files to read with the builder or Hub dataset named by ``dataset``.
        cache_dir: Cache folder of ``datasets`` (its default when ``None``).
        on_bad_row: ``"error"`` or ``"skip"``, for malformed lines.

    Returns:
        The splits and the skipped line counts.

    Raises:
        PreferenceDataError: If a local file has an unknown suffix, is empty or malformed (see above), or the
            source holds no split.
        HubUnavailableError: If ``dataset`` is neither local nor in the cache or on a reachable hub.
    """
    path = Path(dataset)
    if data_files is None and path.is_file():
        dataset, data_files = builder_for_file(path), {"train": str(path)}
    local = _local_files(path, data_files)
    options = _text_options(local)
    skipped: dict[str, dict[str, int]] = {}
    bad: dict[Path, list[BadLine]] = {}
    try:
        loaded = _load(dataset, config_name, data_files, cache_dir, options)
        _check_loaded(local, loaded)
    except Exception as error:  # datasets raises anything from StopIteration to ArrowInvalid
        if not local:
            raise
        clean, skipped, bad = _without_bad_lines(local, error, on_bad_row, cache_dir)
        options = _text_options(clean)
        paths = {split: [str(f) for f in fs] for split, fs in clean.items()}
        loaded = _load(_builder_of(clean), None, paths, cache_dir, options)
    if not isinstance(loaded, datasets.DatasetDict) or not loaded:
        raise PreferenceDataError(f"expected '{dataset}' to load as named splits, got {type(loaded).__name__}")
    for split, files in local.items():
        if split in loaded:
            origin = SplitOrigin(tuple((f, builder_for_file(f)) for f in files), {f: bad[f] for f in files if f in bad})
            record_origin(loaded[split], origin)
    return LoadedSource(loaded, skipped)


def _check_loaded(local: Mapping[str, Sequence[Path]], loaded: object) -> None:
    """Raise if local files hold what ``datasets`` reads without a word.

    A string that is not valid UTF-8 (the JSON reader keeps its bytes; reading the value fails later, naming neither
    file nor line), or a CSV record with the wrong number of fields (too few are read as empty strings).
    """
    if not local or not isinstance(loaded, datasets.DatasetDict):
        return
    for split in loaded.values():
        split.data.table.validate(full=True)  # ArrowInvalid for invalid UTF-8 (a C++ pass over the data)
    csvs = [f for fs in local.values() for f in fs if builder_for_file(f) == "csv"]
    malformed = [f for f in csvs if find_bad_lines(f, "csv")]
    if malformed:
        raise ValueError(f"malformed CSV records in {[str(f) for f in malformed]}")


def _load(
    dataset: str,
    config_name: str | None,
    data_files: DataFiles | None,
    cache_dir: str | None,
    options: Mapping[str, object],
) -> datasets.DatasetDict:
    if dataset in _PACKAGED_DATASETS_MODULES:  # "json", "csv", ...: a builder of local files, no hub look-up
        return _load_dataset(dataset, config_name, data_files, cache_dir, options)
    with hub_errors(dataset, "dataset") as unreachable:
        require_reachable(dataset, "dataset", unreachable)  # no cache-only switch: fail now instead of retrying
        return _load_dataset(dataset, config_name, data_files, cache_dir, options)


def _load_dataset(
    dataset: str,
    config_name: str | None,
    data_files: DataFiles | None,
    cache_dir: str | None,
    options: Mapping[str, object],
) -> datasets.DatasetDict:
    if isinstance(data_files, Mapping):
        # One split at a time: loaded together, a column of mixed types in one split would be cast to the type of
        # the others (a mixed JSON column becomes JSON text), silently changing the values.
        return datasets.DatasetDict(
            {
                split: datasets.load_dataset(
                    dataset, config_name, data_files={split: files}, cache_dir=cache_dir, **options
                )[split]
                for split, files in data_files.items()
            }
        )
    return datasets.load_dataset(dataset, config_name, data_files=data_files, cache_dir=cache_dir, **options)


def _local_files(path: Path, data_files: DataFiles | None) -> dict[str, list[Path]]:
    """The local files of each split (empty when the source is not local)."""
    if data_files is None:
        if not path.is_dir():
            return {}
        patterns = get_data_patterns(str(path))
        resolved = DataFilesDict.from_patterns(patterns, base_path=str(path))
        files = {str(split): [Path(f) for f in found] for split, found in resolved.items()}
    elif isinstance(data_files, Mapping):
        files = {split: [Path(f) for f in ([v] if isinstance(v, str) else v)] for split, v in data_files.items()}
    else:
        files = {"train": [Path(f) for f in ([data_files] if isinstance(data_files, str) else data_files)]}
    if not all(f.is_file() and f.suffix.lower() != ".py" for fs in files.values() for f in fs):
        return {}
    return files


def _builder_of(files: Mapping[str, Sequence[Path]]) -> str:
    builders = {builder_for_file(f) for fs in files.values() for f in fs}
    if len(builders) != 1:
        raise PreferenceDataError(f"expected local files of one format, got {sorted(builders)}: {dict(files)}")
    return builders.pop()


def _text_options(files: Mapping[str, Sequence[Path]]) -> dict[str, object]:
    csvs = [f for fs in files.values() for f in fs if builder_for_file(f) == "csv"]
    return csv_text_options(csvs) if csvs else {}


def _without_bad_lines(
    files: dict[str, list[Path]], error: Exception, on_bad_row: str, cache_dir: str | None
) -> tuple[dict[str, list[Path]], dict[str, dict[str, int]], dict[Path, list[BadLine]]]:
    """After reading failed: name the malformed lines, or (``skip``) copies without them.

    Returns:
        The copies per split, the skipped lines per split and reason, and the bad lines per file.
    """
    found = {f: find_bad_lines(f, builder_for_file(f)) for fs in files.values() for f in fs}
    bad = {f: lines for f, lines in found.items() if lines}
    if not bad:
        cause = f"{type(error).__name__}: {error}" + (f" ({error.__cause__})" if error.__cause__ else "")
        names = ", ".join(f"'{f}'" for f in found)
        raise PreferenceDataError(f"could not read {names}: {cause}") from error
    if on_bad_row != "skip" or any(line.fatal for lines in bad.values() for line in lines):
        messages = "; ".join(describe(f, lines) for f, lines in bad.items())
        skippable = not any(line.fatal for lines in bad.values() for line in lines)
        hint = "; fix it, or set on_bad_row='skip' to skip and count malformed lines" if skippable else ""
        raise PreferenceDataError(messages + hint) from None
    folder = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "betadpo_lightning_clean"
    clean = {s: [copy_without(f, builder_for_file(f), bad.get(f, []), folder) for f in fs] for s, fs in files.items()}
    skipped = {s: dict(n) for s, fs in files.items() if (n := Counter(b.code for f in fs for b in bad.get(f, [])))}
    for f, lines in bad.items():
        rank_zero_warn(f"skipping {describe(f, lines)}")
    return clean, skipped, bad


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
        HubUnavailableError: If ``name_or_path`` is neither a local folder nor in the cache or on a reachable hub.
    """
    options = dict(kwargs or {})
    with hub_errors(name_or_path, "tokenizer") as unreachable:
        if unreachable:
            options["local_files_only"] = True
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **options)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PreferenceDataError(f"tokenizer '{name_or_path}' has neither a pad token nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        if warn:
            rank_zero_warn(
                f"tokenizer '{name_or_path}' has no pad token; using its EOS token {tokenizer.eos_token!r} for padding"
            )
    return tokenizer
