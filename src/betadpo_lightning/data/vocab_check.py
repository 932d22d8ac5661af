"""Token ids checked against a model's vocabulary once, before training, naming the first id out of range."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import datasets
import pyarrow.compute as pc

__all__ = ["ID_COLUMNS", "TokenId", "first_token_at_least", "largest_token_id"]

ID_COLUMNS = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
"""The token-id columns of a tokenized split."""


@dataclass(frozen=True)
class TokenId:
    """Where a token id occurs.

    Attributes:
        token_id: the id.
        split: the split (``"train"``, ``"validation"``).
        row: the pair's row in its source split (the ``index`` column).
        field: the part: ``"prompt"``, ``"chosen"`` or ``"rejected"``.
    """

    token_id: int
    split: str
    row: int
    field: str

    def describe(self) -> str:
        """``token id 70000 (split 'train', row 12, prompt)``."""
        return f"token id {self.token_id} (split '{self.split}', row {self.row}, {self.field})"


def largest_token_id(splits: Mapping[str, datasets.Dataset]) -> int | None:
    """The largest token id of any split (Arrow kernels: no Python loop over rows), or ``None`` for no tokens.

    Example:
        >>> rows = {"prompt_input_ids": [[1, 5]], "chosen_input_ids": [[9]], "rejected_input_ids": [[2]]}
        >>> largest_token_id({"train": datasets.Dataset.from_dict(rows)})
        9
    """
    values = [_column_max(data, column) for data in splits.values() for column in ID_COLUMNS]
    present = [v for v in values if v is not None]
    return max(present) if present else None


def first_token_at_least(splits: Mapping[str, datasets.Dataset], limit: int) -> TokenId | None:
    """The first token id ``>= limit`` in split, row and field order, or ``None``.

    Example:
        >>> rows = {"prompt_input_ids": [[1], [1]], "chosen_input_ids": [[3], [9]], "rejected_input_ids": [[2], [2]]}
        >>> first_token_at_least({"train": datasets.Dataset.from_dict({**rows, "index": [4, 7]})}, 8).describe()
        "token id 9 (split 'train', row 7, chosen)"
    """
    for split, data in splits.items():
        if all((_column_max(data, column) or -1) < limit for column in ID_COLUMNS):
            continue
        rows = data["index"] if "index" in data.column_names else range(len(data))
        for position, row in enumerate(rows):
            for column in ID_COLUMNS:
                beyond = [token for token in data[position][column] if token >= limit]
                if beyond:
                    return TokenId(int(beyond[0]), split, int(row), column.removesuffix("_input_ids"))
    return None


def _column_max(data: datasets.Dataset, column: str) -> int | None:
    if column not in data.column_names:
        return None
    table = data.with_format("arrow")[column]
    flat = pc.list_flatten(table)
    value = pc.max(flat).as_py() if len(flat) else None
    return int(value) if value is not None else None
