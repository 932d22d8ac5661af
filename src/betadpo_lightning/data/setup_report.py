"""What ``setup`` says about each split, on global rank zero: one short block of what was read and what was kept.

::

    preference data 'train': 4093/4096 pairs kept; skipped empty_text=2, invalid_utf8=1
      read           4096 rows of split 'train' of 'pairs.jsonl'
      format         standard (detected): prompt from 'prompt', responses from 'chosen'/'rejected', strings
      chat template  none: string rows are used as raw text (data.chat_template auto)
      skipped        empty_text=2, first: split 'train', file 'pairs.jsonl', line 17
      skipped        invalid_utf8=1, first: file 'pairs.jsonl', line 230

Each reason a row was skipped or dropped comes with its count and the first such row: its file and 1-based line for
a local file, else its 1-based row. Splits with skipped or dropped rows also give their first line as a warning (and
a split with many unknown tokens the warning of :mod:`~betadpo_lightning.data.stats`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from transformers import PreTrainedTokenizerBase

from betadpo_lightning.data.formats import ColumnNames
from betadpo_lightning.data.pipeline import SplitRendering, TokenizationSpec
from betadpo_lightning.data.row_origins import describe_row, split_origin
from betadpo_lightning.data.stats import SplitStats

__all__ = ["SplitReport", "describe_format", "describe_template", "log_split_reports"]

_WIDTH = 15


@dataclass(frozen=True)
class SplitReport:
    """The block of one split.

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"``.
        source: where its rows were read (``split 'train' of 'pairs.jsonl'``).
        stats: its counts.
        format: how its rows are read (:func:`describe_format`).
        template: the chat template its rows are rendered with, or none and why (:func:`describe_template`).
        examples: the first row of each reason (``"skipped empty_text"``), where it lies.
    """

    split: str
    source: str
    stats: SplitStats
    format: str
    template: str
    examples: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The block, as logged."""
        lines = [self.stats.summary(self.split), *_row("read", f"{self.stats.rows} rows of {self.source}")]
        lines += _row("format", self.format) + _row("chat template", self.template)
        for kind, counts in (("skipped", self.stats.skipped), ("dropped", self.stats.dropped)):
            for reason, count in sorted(counts.items()):
                where = self.examples.get(f"{kind} {reason}")
                lines += _row(kind, f"{reason}={count}" + (f", first: {where}" if where else ""))
        return lines


def _row(label: str, text: str) -> list[str]:
    return [f"  {label:<{_WIDTH}}{text}"]


def describe_format(rendering: SplitRendering, names: ColumnNames, requested: str) -> str:
    """How the rows are read: the format, whether detected, and the columns.

    Example:
        >>> from betadpo_lightning.data.formats import ResolvedFormat
        >>> describe_format(SplitRendering(ResolvedFormat("standard", False), False), ColumnNames(), "auto")
        "standard (detected): prompt from 'prompt', responses from 'chosen'/'rejected', strings"
    """
    fmt = rendering.format
    names = fmt.columns(names)
    how = "detected" if requested == "auto" else "set by data.format"
    if fmt.format == "implicit":
        kind = "message lists" if fmt.messages else "transcripts"
        return f"implicit ({how}): the prompt is what '{names.chosen}' and '{names.rejected}' ({kind}) share"
    values = "messages" if fmt.messages else "strings"
    columns = f"prompt from '{names.prompt}', responses from '{names.chosen}'/'{names.rejected}'"
    return f"{fmt.format} ({how}): {columns}, {values}"


def describe_template(
    rendering: SplitRendering, tokenizer: PreTrainedTokenizerBase, option: object, origin: str | None, synthetic: bool
) -> str:
    """The chat template the rows are rendered with (its file, or the tokenizer's), or none and why.

    Args:
        rendering: how the split is rendered.
        tokenizer: the tokenizer.
        option: the data's ``chat_template`` mode (``"auto"``, ``True``, ``False``).
        origin: where a template given in ``data.chat_template`` came from (``"file 'chatml.jinja'"``), if any.
        synthetic: whether the data is the built-in synthetic dataset.
    """
    if rendering.use_template:
        if origin is not None:
            return f"{origin} (data.chat_template)"
        return f"the tokenizer's own ({tokenizer.name_or_path})"
    if synthetic:
        return "none: the synthetic dataset's rows are raw text"
    if option is False:
        return "none: data.chat_template is false"
    if rendering.format.format == "implicit":
        return "none: implicit rows hold their turns in the text"
    has = tokenizer.chat_template is not None
    return "none: string rows are used as raw text (data.chat_template auto)" + (
        "; the tokenizer has one, which data.chat_template true applies" if has else ""
    )


def first_rows(raw: datasets.Dataset, tokenized: datasets.Dataset, stats: SplitStats, source: str) -> dict[str, str]:
    """Where the first row of each skip and drop reason lies (``"skipped empty_text"`` -> its file and line).

    Rows skipped or dropped by tokenization are found by their ``status``; lines skipped before (malformed lines)
    in the record of the files read (:func:`~betadpo_lightning.data.row_origins.split_origin`).
    """
    wanted = {f"{kind}:{reason}" for kind, counts in (("skipped", stats.skipped), ("dropped", stats.dropped))
              for reason in counts}  # fmt: skip
    examples: dict[str, str] = {}
    if not wanted:
        return examples
    for position, status in enumerate(tokenized["status"]):
        if status in wanted and status.replace(":", " ", 1) not in examples:
            index = int(tokenized[position]["index"])
            examples[status.replace(":", " ", 1)] = describe_row(raw, index, source)
    origin = split_origin(raw)
    for path, lines in origin.skipped.items() if origin is not None else ():
        for line in lines:
            key = f"skipped {line.code}"
            if f"skipped:{line.code}" in wanted and key not in examples:
                examples[key] = f"file '{path}', line {line.line}"
    return examples


@rank_zero_only
def log_split_reports(reports: list[SplitReport]) -> None:
    """Log each split's block (global rank zero), then the warnings of the splits that lost rows or hold unknowns."""
    for report in reports:
        rank_zero_info("\n".join(report.lines()))
    for report in reports:
        if report.stats.dropped or report.stats.skipped:
            rank_zero_warn(report.stats.summary(report.split))
        unknown = report.stats.unknown_warning(report.split)
        if unknown is not None:
            rank_zero_warn(unknown)


def build_report(
    split: str,
    raw: datasets.Dataset,
    tokenized: datasets.Dataset,
    stats: SplitStats,
    rendering: SplitRendering,
    context: ReportContext,
) -> SplitReport:
    """The block of one split (the examples are looked for only where rows were skipped or dropped)."""
    source = context.source_names.get(split, split)
    return SplitReport(
        split=split,
        source=f"split '{source}' of '{context.dataset}'",
        stats=stats,
        format=describe_format(rendering, context.spec.names, str(context.spec.format)),
        template=describe_template(
            rendering, context.tokenizer, context.spec.chat_template, context.origin, context.synthetic
        ),
        examples=first_rows(raw, tokenized, stats, source),
    )


@dataclass(frozen=True)
class ReportContext:
    """What every split's block shares.

    Args:
        dataset: the data's name (``data.dataset``).
        spec: how rows are tokenized.
        tokenizer: the tokenizer.
        origin: where a template given in ``data.chat_template`` came from, if any.
        synthetic: whether the data is the built-in synthetic dataset.
        source_names: the source split behind each split.
    """

    dataset: str
    spec: TokenizationSpec
    tokenizer: PreTrainedTokenizerBase
    origin: str | None
    synthetic: bool
    source_names: dict[str, str]
