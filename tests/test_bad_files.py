"""Bad files, not only bad rows: each gets a PreferenceDataError naming the file and the line, and under
``on_bad_row="skip"`` malformed lines are skipped and counted; CSV text columns are read as text; real rows as they
come (blank message-list answers) are rejected like their string forms."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from betadpo_lightning.data import PreferenceDataError
from betadpo_lightning.data.files import BadLine, csv_text_options, describe, find_bad_lines
from helpers.local_files import GOOD, file_module, ready_file_module

pytestmark = [
    pytest.mark.filterwarnings("ignore:tokenizer .* has no pad token:UserWarning"),
    pytest.mark.filterwarnings("ignore:dataset .* has no split 'validation':UserWarning"),
]


def _truncated_file(tmp_path: Path) -> Path:
    """Line 1 and 4 good, line 2 cut off mid-string (as by an interrupted download), line 3 a JSON list."""
    lines = [json.dumps(GOOD), json.dumps(GOOD)[:25], "[1, 2]", json.dumps({**GOOD, "chosen": "Red."})]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_truncated_json_line_is_named(tmp_path, bpe_tokenizer_dir):
    path = _truncated_file(tmp_path)
    with pytest.raises(PreferenceDataError) as caught:
        file_module(path, bpe_tokenizer_dir, tmp_path).prepare_data()
    message = str(caught.value)
    assert f"'{path}': 2 malformed lines: line 2: not valid JSON at column " in message
    assert "line 3: expected a JSON object, got list" in message
    assert "on_bad_row='skip'" in message


def test_truncated_json_lines_are_skipped_and_counted(tmp_path, bpe_tokenizer_dir):
    path = _truncated_file(tmp_path)
    with pytest.warns(UserWarning, match="2/4 pairs kept; skipped malformed_line=2"):
        module = ready_file_module(path, bpe_tokenizer_dir, tmp_path, on_bad_row="skip")
    assert module.stats["train"].skipped == {"malformed_line": 2}
    assert (module.stats["train"].rows, module.stats["train"].kept) == (4, 2)
    assert len(module.splits["train"]) == 2
    path.touch()  # the source is unchanged in content: a second module reads the same copy
    assert len(ready_file_module(path, bpe_tokenizer_dir, tmp_path, on_bad_row="skip").splits["train"]) == 2


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize("name", ["empty.jsonl", "blank.jsonl.gz", "empty.csv"])
def test_empty_file_is_named_under_either_policy(tmp_path, bpe_tokenizer_dir, name, policy):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write("\n\n")
    else:
        path.write_text("", encoding="utf-8")
    with pytest.raises(PreferenceDataError, match=rf"^'{path}': the file is empty: expected one preference pair"):
        file_module(path, bpe_tokenizer_dir, tmp_path, on_bad_row=policy).prepare_data()


def test_integer_beyond_64_bits_is_named(tmp_path):
    """Some ``datasets`` versions fail on it ("Value is too big!"), others read the column as float64: the scan
    that runs when reading fails names the line and the field; -2**63 still fits."""
    big = 2**70
    path = tmp_path / "rows.jsonl"
    rows = [GOOD, {**GOOD, "meta": {"ids": [1, big]}}, {**GOOD, "id": -(2**63)}]
    path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    assert find_bad_lines(path, "json") == [
        BadLine(2, f"the integer {big} in field 'meta.ids[1]' does not fit in 64 bits")
    ]


def test_json_document_error_cannot_be_skipped(tmp_path, bpe_tokenizer_dir):
    path = tmp_path / "pairs.json"
    path.write_text("[\n" + json.dumps(GOOD) + ",\n" + json.dumps(GOOD)[:20] + "\n", encoding="utf-8")
    expected = r"1 malformed line: line 3: not valid JSON .*; a JSON document cannot be read past it$"
    with pytest.raises(PreferenceDataError, match=expected):
        file_module(path, bpe_tokenizer_dir, tmp_path, on_bad_row="skip").prepare_data()


def test_csv_columns_are_text_as_written(tmp_path, bpe_tokenizer_dir):
    """An all-numeric prompt column stays text ("007" is not 7) and the cells NA and None stay text."""
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\n007,NA,None\n12,3.50,4\n", encoding="utf-8")
    assert csv_text_options([path]) == {
        "converters": {"prompt": str, "chosen": str, "rejected": str},
        "na_filter": False,
    }
    module = ready_file_module(path, bpe_tokenizer_dir, tmp_path)
    assert module.stats["train"].kept == 2
    tokenizer = module.tokenizer
    first = module.splits["train"][0]
    assert tokenizer.decode(first["prompt_input_ids"], skip_special_tokens=True) == "007"
    assert tokenizer.decode(first["chosen_input_ids"]).startswith("NA")


def test_csv_record_with_wrong_field_count(tmp_path, bpe_tokenizer_dir):
    path = tmp_path / "pairs.csv"
    path.write_text('prompt,chosen,rejected\na,b,c\nd,e,f,g\n"multi\nline",h,i\n', encoding="utf-8")
    assert find_bad_lines(path, "csv") == [BadLine(3, "expected 3 fields (the header's), got 4")]
    with pytest.raises(PreferenceDataError, match=r"line 3: expected 3 fields \(the header's\), got 4"):
        file_module(path, bpe_tokenizer_dir, tmp_path).prepare_data()
    with pytest.warns(UserWarning, match="skipped malformed_line=1"):
        module = ready_file_module(path, bpe_tokenizer_dir, tmp_path, on_bad_row="skip")
    assert module.stats["train"].kept == 2  # the quoted two-line record is one good record


def test_describe_shortens_long_lists():
    bad = [BadLine(n, "bad") for n in range(1, 6)]
    assert (
        describe(Path("f.jsonl"), bad)
        == "'f.jsonl': 5 malformed lines: line 1: bad; line 2: bad; line 3: bad; and 2 more"
    )


# --- real rows as they come ---------------------------------------------------------------------------------------


def _hh_messages(tmp_path: Path, fixtures_dir: Path) -> Path:
    """The HH fixture as message lists plus a row whose chosen answer is blank after the shared turns."""
    rows = [json.loads(line) for line in (fixtures_dir / "hh_messages.jsonl").read_text().splitlines()]
    shared = [{"role": "user", "content": "Hi!"}]
    rows.append({"chosen": [*shared, {"role": "assistant", "content": " \n"}],
                 "rejected": [*shared, {"role": "assistant", "content": "Hello."}]})  # fmt: skip
    path = tmp_path / "hh_messages.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


def test_blank_message_answer_is_empty_text_like_its_string_form(tmp_path, fixtures_dir, bpe_tokenizer_dir):
    """Rendered, the blank answer would be only the end-of-turn tokens ('<|im_end|>\\n'): a pair without an answer."""
    path = _hh_messages(tmp_path, fixtures_dir)
    with pytest.raises(PreferenceDataError, match=r"line 3, field 'chosen': expected non-empty response"):
        file_module(path, bpe_tokenizer_dir, tmp_path, format="implicit").prepare_data()
    with pytest.warns(UserWarning, match="2/3 pairs kept; skipped empty_text=1"):
        module = ready_file_module(path, bpe_tokenizer_dir, tmp_path, format="implicit", on_bad_row="skip")
    assert list(module.splits["train"]["index"]) == [0, 1]
