"""Cached tokenization of raw splits with ``datasets.Dataset.map``.

Every step gets an explicit fingerprint built from everything its output depends on: the source split's own
fingerprint, the tokenizer's full serialized state and chat template, the settings, and the source code of the
modules that render, tokenize and truncate. The same inputs therefore give the same cache file name in every
process and every run, so a second run (or every rank after ``prepare_data``) reads the cached Arrow file instead
of tokenizing again, and any change of an input tokenizes anew.
"""

from __future__ import annotations

import hashlib
import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import datasets
import pyarrow.compute as pc
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase

import betadpo_lightning
from betadpo_lightning.data import boundary, formats, implicit, long_texts, messages, render, tokenize, truncation
from betadpo_lightning.data.errors import PreferenceDataError
from betadpo_lightning.data.formats import ColumnNames, FormatOption, resolve_format
from betadpo_lightning.data.long_texts import BoundedRenderer, max_text_chars
from betadpo_lightning.data.processes import tokenization_processes
from betadpo_lightning.data.render import ChatTemplateOption, PairRenderer
from betadpo_lightning.data.row_origins import describe_row
from betadpo_lightning.data.tokenize import STATUS_OK, TOKENIZED_FEATURES, BadRowPolicy, PairTokenizer
from betadpo_lightning.data.truncation import TruncationLimits

PAIR_COLUMNS = ["prompt_input_ids", "chosen_input_ids", "rejected_input_ids", "index", "truncation"]
_FORMAT_SAMPLE = 100


@dataclass(frozen=True)
class TokenizationSpec:
    """Everything that decides how raw rows become tokenized pairs, besides the tokenizer.

    Args:
        names: The preference column names.
        format: ``"auto"`` or a forced format.
        chat_template: ``"auto"``, ``True`` or ``False``.
        limits: Truncation limits.
        on_bad_row: ``"error"`` or ``"skip"``.
        chat_template_kwargs: Extra variables for the chat template (e.g. ``{"enable_thinking": False}``).
    """

    names: ColumnNames
    format: FormatOption = "auto"
    chat_template: ChatTemplateOption = "auto"
    limits: TruncationLimits = field(default_factory=TruncationLimits)
    on_bad_row: BadRowPolicy = "error"
    chat_template_kwargs: Mapping[str, Any] | None = None


def code_fingerprint() -> str:
    """Hash of the source code that turns rows into tokenized pairs (of the package version without sources)."""
    try:
        modules = (boundary, formats, implicit, long_texts, messages, render, tokenize, truncation)
        return Hasher.hash([inspect.getsource(module) for module in modules])
    except OSError:
        return Hasher.hash(["betadpo_lightning", betadpo_lightning.__version__])


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of everything about a tokenizer that changes tokenization or rendering.

    Args:
        tokenizer: The tokenizer.

    Returns:
        A hash of its class, serialized backend (vocabulary, merges, normalizer, added tokens, post-processor),
        special tokens and chat template.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else Hasher.hash(tokenizer)
    special = {name: str(value) for name, value in tokenizer.special_tokens_map.items()}
    return Hasher.hash([type(tokenizer).__qualname__, state, special, tokenizer.chat_template])


def tokenize_split(
    raw: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    spec: TokenizationSpec,
    split: str,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Tokenize every row of a raw split, keeping all rows with a ``status`` and a ``truncation`` column.

    Args:
        raw: The raw split.
        tokenizer: The tokenizer.
        spec: How to tokenize.
        split: The split's name (for progress messages and the location of a bad row).
        num_proc: Processes for ``datasets.map``, at most the CPUs (``None``: as the rows make worth it, one process
            for small splits; see :func:`~betadpo_lightning.data.processes.tokenization_processes`).

    Returns:
        A dataset with the columns of :data:`~betadpo_lightning.data.tokenize.TOKENIZED_FEATURES`, one row per raw
        row, read from the cache when the same inputs were tokenized before. Texts longer than truncation can keep
        are cut before they are tokenized (:mod:`~betadpo_lightning.data.long_texts`).

    Raises:
        PreferenceDataError: If a column is missing, the tokenizer cannot render the format, or (with
            ``on_bad_row="error"``) a row is bad: then it names the split and, for local files, the file and the
            1-based line of the row (else its 1-based row; the error's ``row`` stays its 0-based index).
    """
    fmt = resolve_format(raw[:_FORMAT_SAMPLE], spec.names, spec.format)
    renderer = PairRenderer(tokenizer, fmt, spec.names, spec.chat_template, spec.chat_template_kwargs)
    max_chars = max_text_chars(tokenizer, spec.limits)
    bounded = BoundedRenderer(renderer, max_chars)
    function = PairTokenizer(tokenizer, bounded, spec.limits, spec.on_bad_row)  # type: ignore[arg-type]
    fingerprint = Hasher.hash(
        [
            raw._fingerprint,
            tokenizer_fingerprint(tokenizer),
            repr(spec),
            repr(fmt),
            renderer.use_template,
            max_chars,
            code_fingerprint(),
        ]
    )
    try:
        return raw.map(
            function,
            batched=True,
            with_indices=True,
            remove_columns=raw.column_names,
            features=TOKENIZED_FEATURES,
            num_proc=tokenization_processes(len(raw), num_proc),
            new_fingerprint=fingerprint,
            desc=f"Tokenizing preference pairs ({split})",
        )
    except PreferenceDataError as error:
        if error.row is None or error.location is not None:
            raise
        where = describe_row(raw, error.row, split)
        raise PreferenceDataError(
            error.detail, row=error.row, field=error.field, reason=error.reason, location=where
        ) from None


@dataclass(frozen=True)
class SplitRendering:
    """How the rows of a split are read and rendered (as :func:`tokenize_split` decides it).

    Args:
        format: The split's format, detected or forced.
        use_template: Whether its rows are rendered with the chat template.
    """

    format: formats.ResolvedFormat
    use_template: bool


def split_rendering(
    raw: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, spec: TokenizationSpec
) -> SplitRendering:
    """The format and the chat template use of a raw split, decided as :func:`tokenize_split` decides them.

    Call it after :func:`tokenize_split` (which raises for a split that cannot be rendered, and gives the advice
    about raw text and chat templates once: it is not repeated here).
    """
    fmt = resolve_format(raw[:_FORMAT_SAMPLE], spec.names, spec.format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        renderer = PairRenderer(tokenizer, fmt, spec.names, spec.chat_template, spec.chat_template_kwargs)
    return SplitRendering(fmt, renderer.use_template)


def _is_kept(status: list[str]) -> list[bool]:
    return [value == STATUS_OK for value in status]


def kept_pairs(tokenized: datasets.Dataset) -> datasets.Dataset:
    """The kept rows of a tokenized split: the pair columns and ``truncation`` (the parts cut from each pair).

    Args:
        tokenized: Output of :func:`tokenize_split` (or a part of it).

    Returns:
        Rows with status ``"ok"``, columns :data:`PAIR_COLUMNS`.
    """
    kept = tokenized.filter(
        _is_kept,
        input_columns="status",
        batched=True,
        new_fingerprint=Hasher.hash([tokenized._fingerprint, "kept_pairs", STATUS_OK]),
    )
    return kept.select_columns(PAIR_COLUMNS)


def split_off_validation(
    tokenized: datasets.Dataset, fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split a tokenized split into training and validation rows at random.

    Args:
        tokenized: Output of :func:`tokenize_split`.
        fraction: Share of rows that go to validation, in ``(0, 1)``.
        seed: Seed of the split.

    Returns:
        ``(train, validation)``; both keep ``index`` as the row's position in the source split.
    """
    parts = tokenized.train_test_split(test_size=fraction, shuffle=True, seed=seed)
    return parts["train"], parts["test"]


def content_hash(data: datasets.Dataset) -> str:
    """SHA-256 of a split's pairs, in order: the token ids of prompt, chosen and rejected, and the row indices.

    Independent of where the data and its cache files lie; any change of a token or of the order changes it.
    """
    table = data.select_columns(["prompt_input_ids", "chosen_input_ids", "rejected_input_ids", "index"])
    table = table.with_format("arrow")[:]  # the rows as they are served (any index mapping applied)
    digest = hashlib.sha256()
    for name in table.column_names:
        column = table.column(name)
        if name != "index":
            digest.update(pc.list_value_length(column).to_numpy(zero_copy_only=False).tobytes())
            column = pc.list_flatten(column)
        digest.update(column.to_numpy(zero_copy_only=False).tobytes())
    return digest.hexdigest()[:16]
