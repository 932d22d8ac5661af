"""Counts of kept, dropped, skipped and truncated rows of a tokenized split, and of its unknown tokens.

Text that a tokenizer cannot represent becomes its unknown token (``unk_token_id``, e.g. ``<unk>`` of a word-level or
SentencePiece tokenizer without byte fallback) without any error. When more than :data:`UNKNOWN_TOKEN_WARNING` of a
split's prompt and response tokens are unknown, :func:`log_stats` warns, naming the split, the share, the count and
an example row: the data was most likely tokenized with a tokenizer other than the model's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import datasets
import numpy as np
import pyarrow.compute as pc
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from betadpo_lightning.data.tokenize import STATUS_OK
from betadpo_lightning.data.vocab_check import ID_COLUMNS

UNKNOWN_TOKEN_WARNING = 0.01
"""Share of a split's prompt and response tokens that are the unknown token above which :func:`log_stats` warns."""


@dataclass(frozen=True)
class SplitStats:
    """What tokenization did to the rows of one split.

    Args:
        rows: Rows in the split before tokenization.
        kept: Rows turned into training pairs.
        dropped: Rows dropped by tokenization, by reason (``"too_long"``: no room for a response token;
            ``"identical_tokens"``: chosen and rejected ids equal after tokenization and truncation).
        skipped: Bad rows skipped under ``on_bad_row="skip"``, by reason (e.g. ``"identical_pair"``; for lines of a
            local file that could not be read as a row ``"malformed_line"``, ``"invalid_utf8"`` or, a CSV record with
            fewer fields than its header, ``"missing_fields"``).
        truncated: Kept rows whose prompt, chosen or rejected part was cut, by part.
        tokens: Prompt, chosen and rejected tokens of the kept pairs (each prompt counted once).
        unknown_tokens: How many of them are the tokenizer's unknown token.
        unknown_example: The source row (0-based index) of the first pair holding an unknown token, if any.
    """

    rows: int
    kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    unknown_tokens: int = 0
    unknown_example: int | None = None

    @property
    def unknown_row(self) -> int | None:
        """The 1-based row of :attr:`unknown_example` in its source split, as messages count rows."""
        return None if self.unknown_example is None else self.unknown_example + 1

    @property
    def unknown_fraction(self) -> float:
        """Share of :attr:`tokens` that are unknown (0 without tokens)."""
        return self.unknown_tokens / self.tokens if self.tokens else 0.0

    @classmethod
    def from_tokenized(cls, data: datasets.Dataset, unk_token_id: int | None) -> SplitStats:
        """Count a tokenized split: its ``status`` and ``truncation`` columns and its (unknown) tokens.

        Args:
            data: A tokenized split (every row, with ``status``, ``truncation``, ``index`` and the id columns).
            unk_token_id: The tokenizer's unknown token id (``None``: the tokenizer has none, e.g. byte-level BPE).

        Returns:
            The counts.

        Examples:
            >>> rows = {"prompt_input_ids": [[2, 1], []], "chosen_input_ids": [[5, 3], []],
            ...         "rejected_input_ids": [[1, 3], []], "index": [7, 8],
            ...         "status": ["ok", "skipped:empty_text"], "truncation": ["none", "none"]}
            >>> stats = SplitStats.from_tokenized(datasets.Dataset.from_dict(rows), unk_token_id=1)
            >>> stats.tokens, stats.unknown_tokens, stats.unknown_example
            (6, 2, 7)
        """
        counts = cls.from_columns(data["status"], data["truncation"])
        table = data.select_columns([*ID_COLUMNS, "index"]).with_format("arrow")[:]  # any index mapping applied
        per_row = np.zeros(table.num_rows, dtype=np.int64)
        tokens = 0
        for column in ID_COLUMNS:
            ids = table.column(column)
            flat = pc.list_flatten(ids)
            tokens += len(flat)
            if unk_token_id is None or not len(flat):
                continue
            hits = np.flatnonzero(pc.equal(flat, unk_token_id).to_numpy(zero_copy_only=False))
            if len(hits):  # the row of each hit: the first row whose end lies beyond it
                ends = np.cumsum(pc.list_value_length(ids).fill_null(0).to_numpy(zero_copy_only=False))
                per_row += np.bincount(np.searchsorted(ends, hits, side="right"), minlength=table.num_rows)
        holding = np.flatnonzero(per_row)
        example = int(table.column("index")[int(holding[0])].as_py()) if len(holding) else None
        return replace(counts, tokens=tokens, unknown_tokens=int(per_row.sum()), unknown_example=example)

    @classmethod
    def from_columns(cls, status: Iterable[str], truncation: Iterable[str]) -> SplitStats:
        """Count the ``status`` and ``truncation`` columns written by tokenization.

        Args:
            status: One status per row: ``"ok"``, ``"dropped:<reason>"`` or ``"skipped:<reason>"``.
            truncation: One entry per row: ``"none"`` or the cut parts joined by ``"+"``.

        Returns:
            The counts.

        Examples:
            >>> stats = SplitStats.from_columns(["ok", "dropped:too_long", "ok"], ["prompt+chosen", "none", "none"])
            >>> stats.rows, stats.kept, stats.dropped, stats.skipped, stats.truncated
            (3, 2, {'too_long': 1}, {}, {'prompt': 1, 'chosen': 1})
        """
        rows = kept = 0
        outcomes: dict[str, Counter[str]] = {"dropped": Counter(), "skipped": Counter()}
        parts: Counter[str] = Counter()
        for row_status, row_truncation in zip(status, truncation, strict=True):
            rows += 1
            if row_status == STATUS_OK:
                kept += 1
                parts.update(part for part in row_truncation.split("+") if part != "none")
                continue
            kind, _, reason = row_status.partition(":")
            outcomes[kind][reason] += 1
        return cls(rows, kept, dict(outcomes["dropped"]), dict(outcomes["skipped"]), dict(parts))

    def with_malformed_lines(self, count: int | Mapping[str, int]) -> SplitStats:
        """These counts plus the source lines skipped before tokenization: a number (``malformed_line``) or by reason.

        Examples:
            >>> SplitStats(rows=3, kept=3).with_malformed_lines(2).summary("train")
            "preference data 'train': 3/5 pairs kept; skipped malformed_line=2"
            >>> SplitStats(rows=3, kept=3).with_malformed_lines({"missing_fields": 1, "invalid_utf8": 1}).skipped
            {'missing_fields': 1, 'invalid_utf8': 1}
        """
        counts = {"malformed_line": count} if isinstance(count, int) else dict(count)
        counts = {reason: n for reason, n in counts.items() if n}
        if not counts:
            return self
        skipped = Counter(self.skipped)
        skipped.update(counts)
        return replace(self, rows=self.rows + sum(counts.values()), skipped=dict(skipped))

    def summary(self, split: str) -> str:
        """One line describing the counts, for the log.

        Args:
            split: Name of the split.

        Returns:
            The line.
        """
        line = f"preference data '{split}': {self.kept}/{self.rows} pairs kept"
        for name, counts in (("dropped", self.dropped), ("skipped", self.skipped), ("truncated", self.truncated)):
            if counts:
                line += f"; {name} " + ", ".join(f"{reason}={count}" for reason, count in sorted(counts.items()))
        if self.unknown_tokens:
            line += f"; unknown tokens {self.unknown_tokens}/{self.tokens} ({self.unknown_fraction:.1%})"
        return line

    def unknown_warning(self, split: str) -> str | None:
        """The warning about unknown tokens, when more than :data:`UNKNOWN_TOKEN_WARNING` of the tokens are unknown.

        Examples:
            >>> SplitStats(rows=2, kept=2, tokens=50, unknown_tokens=5, unknown_example=1).unknown_warning("train")[:72]
            "preference data 'train': 5 of 50 prompt and response tokens (10.0%) are "
        """
        if self.unknown_fraction <= UNKNOWN_TOKEN_WARNING:
            return None
        return (
            f"preference data '{split}': {self.unknown_tokens} of {self.tokens} prompt and response tokens "
            f"({self.unknown_fraction:.1%}) are the tokenizer's unknown token (first in row {self.unknown_row}): "
            "the tokenizer does not know this text, and the model would see the unknown token instead. Use the "
            "model's own tokenizer (data.tokenizer, which defaults to the model's)"
        )


def log_stats(split: str, stats: SplitStats) -> None:
    """Log a split's counts on rank zero: info when nothing was dropped or skipped, a warning otherwise.

    A second warning follows when more than :data:`UNKNOWN_TOKEN_WARNING` of the split's tokens are unknown.

    Args:
        split: Name of the split.
        stats: Its counts.
    """
    if stats.dropped or stats.skipped:
        rank_zero_warn(stats.summary(split))
    else:
        rank_zero_info(stats.summary(split))
    unknown = stats.unknown_warning(split)
    if unknown is not None:
        rank_zero_warn(unknown)
