"""Counts of kept, dropped, skipped and truncated rows of a tokenized split."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from betadpo_lightning.data.tokenize import STATUS_OK


@dataclass(frozen=True)
class SplitStats:
    """What tokenization did to the rows of one split.

    Args:
        rows: Rows in the split before tokenization.
        kept: Rows turned into training pairs.
        dropped: Rows dropped by tokenization, by reason (``"too_long"``: no room for a response token;
            ``"identical_tokens"``: chosen and rejected ids equal after tokenization and truncation).
        skipped: Bad rows skipped under ``on_bad_row="skip"``, by reason (e.g. ``"identical_pair"``;
            ``"malformed_line"`` for lines of a local file that could not be read as a row).
        truncated: Kept rows whose prompt, chosen or rejected part was cut, by part.
    """

    rows: int
    kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_columns(cls, status: Iterable[str], truncation: Iterable[str]) -> SplitStats:
        """Count the ``status`` and ``truncation`` columns written by tokenization.

        Args:
            status: One status per row: ``"ok"``, ``"dropped:<reason>"`` or ``"skipped:<reason>"``.
            truncation: One entry per row: ``"none"`` or the cut parts joined by ``"+"``.

        Returns:
            The counts.

        Examples:
            >>> SplitStats.from_columns(["ok", "dropped:too_long", "ok"], ["prompt+chosen", "none", "none"])
            SplitStats(rows=3, kept=2, dropped={'too_long': 1}, skipped={}, truncated={'prompt': 1, 'chosen': 1})
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

    def with_malformed_lines(self, count: int) -> SplitStats:
        """These counts plus ``count`` malformed source lines skipped before tokenization (``malformed_line``).

        Examples:
            >>> SplitStats(rows=3, kept=3).with_malformed_lines(2).summary("train")
            "preference data 'train': 3/5 pairs kept; skipped malformed_line=2"
        """
        if not count:
            return self
        return replace(self, rows=self.rows + count, skipped={**self.skipped, "malformed_line": count})

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
        return line


def log_stats(split: str, stats: SplitStats) -> None:
    """Log a split's counts on rank zero: info when nothing was dropped or skipped, a warning otherwise.

    Args:
        split: Name of the split.
        stats: Its counts.
    """
    if stats.dropped or stats.skipped:
        rank_zero_warn(stats.summary(split))
    else:
        rank_zero_info(stats.summary(split))
