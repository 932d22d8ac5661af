"""Bad data is named by split, file and 1-based line; invalid UTF-8 and short CSV records are skippable with their own
reasons; a huge row is cut before tokenization to what truncation can keep, with the same ids as the whole text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from betadpo_lightning.data import PreferenceDataError, PreferenceDataModule
from betadpo_lightning.data import pipeline as pipeline_module
from betadpo_lightning.data.files import BadLine, find_bad_lines, row_lines
from betadpo_lightning.data.formats import ColumnNames, resolve_format
from betadpo_lightning.data.long_texts import BoundedRenderer, longest_token_chars, max_text_chars
from betadpo_lightning.data.render import PairRenderer
from betadpo_lightning.data.tokenize import PairTokenizer
from betadpo_lightning.data.truncation import TruncationLimits
from helpers.local_files import GOOD, file_module, ready_file_module

pytestmark = [
    pytest.mark.filterwarnings("ignore:tokenizer .* has no pad token:UserWarning"),
    pytest.mark.filterwarnings("ignore:dataset .* has no split 'validation':UserWarning"),
]

# --- invalid UTF-8 ------------------------------------------------------------------------------------------------


def _invalid_utf8_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    bad = b'{"prompt": "caf\xff", "chosen": "a", "rejected": "b"}\n'
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\n" + bad + json.dumps(GOOD).encode() + b"\n")
    return path


def test_invalid_utf8_names_file_and_line(tmp_path, bpe_tokenizer_dir):
    """The JSON reader keeps the bytes; the error used to come when a value was read, naming nothing."""
    path = _invalid_utf8_jsonl(tmp_path)
    with pytest.raises(PreferenceDataError) as caught:
        file_module(path, bpe_tokenizer_dir, tmp_path).prepare_data()
    message = str(caught.value)
    assert f"'{path}': 1 malformed line: line 3: not valid UTF-8: byte 0xff at byte 16 of the line" in message
    assert "on_bad_row='skip'" in message


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_invalid_utf8_lines_are_skipped_and_counted(tmp_path, bpe_tokenizer_dir, suffix):
    if suffix == "jsonl":
        path = _invalid_utf8_jsonl(tmp_path)
    else:
        path = tmp_path / "pairs.csv"
        path.write_bytes(b"prompt,chosen,rejected\nhi,yes,no\ncaf\xff,a,b\nhey,sure,never\n")
    with pytest.warns(UserWarning, match=r"2/3 pairs kept; skipped invalid_utf8=1"):
        module = ready_file_module(path, bpe_tokenizer_dir, tmp_path, on_bad_row="skip")
    assert module.stats["train"].skipped == {"invalid_utf8": 1}
    assert len(module.splits["train"]) == 2


def test_a_json_document_with_invalid_utf8_cannot_be_skipped(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_bytes(b'[\n{"prompt": "a\xff", "chosen": "b", "rejected": "c"}\n]\n')
    (bad,) = find_bad_lines(path, "json")
    assert (bad.line, bad.fatal, bad.code) == (2, True, "malformed_line")
    assert "a JSON document cannot be read past it" in bad.reason


# --- rows named by split, file and line ---------------------------------------------------------------------------


def test_a_bad_row_names_split_file_and_line(tmp_path, bpe_tokenizer_dir):
    """Line numbers count blank lines and a quoted record over two lines; the row's 0-based index stays in ``row``."""
    path = tmp_path / "pairs.jsonl"
    rows = [json.dumps(GOOD), "", json.dumps(GOOD), json.dumps({**GOOD, "chosen": " "})]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(PreferenceDataError) as caught:
        file_module(path, bpe_tokenizer_dir, tmp_path).prepare_data()
    assert str(caught.value).startswith(f"split 'train', file '{path}', line 4, field 'chosen': expected a non-empty")
    assert (caught.value.row, caught.value.field, caught.value.reason) == (2, "chosen", "empty_text")

    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text('prompt,chosen,rejected\n"two\nlines",yes,no\nhi,,no\n', encoding="utf-8")
    with pytest.raises(PreferenceDataError, match=rf"^split 'train', file '{csv_path}', line 4, field 'chosen': "):
        file_module(csv_path, bpe_tokenizer_dir, tmp_path / "csv").prepare_data()


def test_rows_of_a_second_file_and_of_the_validation_split(tmp_path, bpe_tokenizer_dir):
    first, second, held_out = (tmp_path / name for name in ("a.jsonl", "b.jsonl", "val.jsonl"))
    first.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n", encoding="utf-8")
    second.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "rejected": "Blue."}) + "\n", encoding="utf-8")
    held_out.write_text(json.dumps({**GOOD, "prompt": None}) + "\n", encoding="utf-8")
    module = PreferenceDataModule(
        dataset="json",
        data_files={"train": [str(first), str(second)], "validation": str(held_out)},
        tokenizer=str(bpe_tokenizer_dir),
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(PreferenceDataError, match=rf"^split 'train', file '{second}', line 2, field 'rejected'"):
        module.prepare_data()
    second.write_text(json.dumps(GOOD) + "\n", encoding="utf-8")
    with pytest.raises(PreferenceDataError, match=rf"^split 'validation', file '{held_out}', line 1, field 'prompt'"):
        module.prepare_data()


def test_row_lines_follow_what_datasets_reads(tmp_path):
    """Blank lines and skipped lines hold no row; a U+2028 inside a JSON string does not end a line."""
    path = tmp_path / "pairs.jsonl"
    odd = json.dumps({**GOOD, "prompt": "a\u2028b"}, ensure_ascii=False)
    path.write_text("\n".join([json.dumps(GOOD), "", odd, "{broken", json.dumps(GOOD)]) + "\n", encoding="utf-8")
    assert row_lines(path, "json", [BadLine(4, "not valid JSON")]) == [1, 3, 5]
    assert [bad.line for bad in find_bad_lines(path, "json")] == [4]


# --- CSV records with too few fields ------------------------------------------------------------------------------


def test_a_short_csv_record_has_its_own_reason(tmp_path, bpe_tokenizer_dir):
    """``datasets`` reads missing fields as empty strings: the record is named, or skipped as missing_fields; an
    empty field in a complete record is still empty_text."""
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\nhi,yes,no\nhey,sure\nhello,,no\nyo,fine,bad\n", encoding="utf-8")
    with pytest.raises(PreferenceDataError, match=r"line 3: expected 3 fields \(the header's\), got 2"):
        file_module(path, bpe_tokenizer_dir, tmp_path).prepare_data()
    with pytest.warns(UserWarning, match=r"2/4 pairs kept; skipped empty_text=1, missing_fields=1"):
        module = ready_file_module(path, bpe_tokenizer_dir, tmp_path, on_bad_row="skip")
    assert module.stats["train"].skipped == {"missing_fields": 1, "empty_text": 1}


# --- huge rows ----------------------------------------------------------------------------------------------------


def _text(n: int, spaces: bool, seed: int) -> str:
    rng = random.Random(seed)
    words = ["hello", "world", "wide", "again", "wonder", "say", "the", "of", "worldwide"]
    if spaces:
        return " ".join(rng.choice(words) for _ in range(n // 5))[:n]
    return "".join(rng.choice(words) for _ in range(n // 5))[:n]


@pytest.mark.parametrize("spaces", [True, False], ids=["words", "no-spaces"])
@pytest.mark.parametrize("max_prompt_length", [None, 8])
def test_long_texts_are_cut_before_tokenizing_with_the_same_ids(bpe_tokenizer, spaces, max_prompt_length):
    """Long prompts and responses (200,000 characters, with and without spaces) give the ids and truncation marks
    of the whole texts, although the tokenizer sees only ``max_text_chars`` characters of each."""
    limits = TruncationLimits(max_length=48, max_prompt_length=max_prompt_length)
    long = 200_000
    rows = {
        "prompt": [_text(long, spaces, 1), "Say hi.", _text(long, spaces, 2)],
        "chosen": [_text(long, spaces, 3), _text(long, spaces, 4), "Hi."],
        "rejected": ["No.", _text(long, spaces, 5), _text(long, spaces, 6)],
    }
    names = ColumnNames()
    renderer = PairRenderer(bpe_tokenizer, resolve_format(rows, names), names, False)
    bound = max_text_chars(bpe_tokenizer, limits)
    assert bound == 2 * (48 + 64) * longest_token_chars(bpe_tokenizer) < long // 10
    bounded = BoundedRenderer(renderer, bound)
    assert max(len(text) for text in vars(bounded.render({k: v[0] for k, v in rows.items()}, 0)).values()) == bound
    whole = PairTokenizer(bpe_tokenizer, renderer, limits)(rows, [0, 1, 2])
    cut = PairTokenizer(bpe_tokenizer, bounded, limits)(rows, [0, 1, 2])
    assert cut == whole
    long_parts = [{"prompt", "chosen"}, {"chosen", "rejected"}, {"prompt", "rejected"}]
    for marks, parts in zip(whole["truncation"], long_parts, strict=True):
        assert parts <= set(marks.split("+")), (marks, parts)
    assert whole["status"] == ["ok"] * 3


def test_a_huge_row_through_the_data_module(tmp_path, bpe_tokenizer_dir, monkeypatch):
    """A 3 MB response: the same pairs as without the cut (the cut switched off by hand for the comparison)."""
    path = tmp_path / "pairs.jsonl"
    rows = [GOOD, {**GOOD, "chosen": _text(3_000_000, True, 7)}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    cut = ready_file_module(path, bpe_tokenizer_dir, tmp_path / "cut", max_length=64)
    monkeypatch.setattr(pipeline_module, "max_text_chars", lambda tokenizer, limits: None)
    whole = ready_file_module(path, bpe_tokenizer_dir, tmp_path / "whole", max_length=64)
    assert cut.splits["train"][:] == whole.splits["train"][:]
    assert cut.stats["train"].truncated == {"chosen": 1}
