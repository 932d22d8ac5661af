"""At setup, one block per split on rank zero: rows read, the format, the chat template (or none and why), the
pairs kept, and for each reason rows were skipped or dropped its count and the first such row, by file and line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from betadpo_lightning.data import PreferenceDataModule
from helpers.log_records import CollectMessages


@pytest.fixture
def logged():
    handler = CollectMessages()
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.messages
    for logger in loggers:
        logger.removeHandler(handler)


def _block(messages: list[str], split: str) -> list[str]:
    (block,) = [m for m in messages if m.startswith(f"preference data '{split}':") and "\n" in m]
    return block.splitlines()


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _setup(tmp_path: Path, dataset: Path, tokenizer: Path, **options) -> PreferenceDataModule:
    module = PreferenceDataModule(
        dataset=str(dataset), tokenizer=str(tokenizer), cache_dir=str(tmp_path / "cache"), val_split=None, **options
    )
    module.prepare_data()
    module.setup("fit")
    return module


def test_skipped_rows_are_counted_with_their_first_file_and_line(tmp_path, bpe_tokenizer_dir, logged):
    row = {"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "No."}
    path = _write(
        tmp_path / "pairs.jsonl",
        [
            json.dumps(row),
            json.dumps({**row, "chosen": ""}),  # line 2: empty_text
            json.dumps(row),
            "{not json",  # line 4: malformed_line
            json.dumps({**row, "rejected": ""}),  # line 5: empty_text again (the first is named)
            json.dumps({**row, "rejected": row["chosen"]}),  # line 6: identical_pair
        ],
    )
    with pytest.warns(UserWarning, match="2/6 pairs kept"):
        _setup(tmp_path, path, bpe_tokenizer_dir, on_bad_row="skip")
    block = _block(logged, "train")
    assert (
        block[0] == "preference data 'train': 2/6 pairs kept; skipped empty_text=2, identical_pair=1, malformed_line=1"
    )
    assert block[1] == f"  read           6 rows of split 'train' of '{path}'"
    assert block[2] == (
        "  format         standard (detected): prompt from 'prompt', responses from 'chosen'/'rejected', strings"
    )
    assert block[3].startswith("  chat template  none: string rows are used as raw text (data.chat_template auto)")
    assert block[4:] == [
        f"  skipped        empty_text=2, first: split 'train', file '{path}', line 2",
        f"  skipped        identical_pair=1, first: split 'train', file '{path}', line 6",
        f"  skipped        malformed_line=1, first: file '{path}', line 4",
    ]


def test_a_chat_template_file_and_conversational_rows(tmp_path, bpe_tokenizer_dir, logged):
    from conftest import CHATML_TEMPLATE

    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML_TEMPLATE, encoding="utf-8")
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {n}?"}],
            "chosen": [{"role": "assistant", "content": "A good answer."}],
            "rejected": [{"role": "assistant", "content": "No."}],
        }
        for n in range(3)
    ]
    path = _write(tmp_path / "chat.jsonl", [json.dumps(row) for row in rows])
    module = _setup(tmp_path, path, bpe_tokenizer_dir, chat_template=str(template))
    block = _block(logged, "train")
    assert block[0] == "preference data 'train': 3/3 pairs kept"
    assert block[2].startswith("  format         conversational (detected): prompt from 'prompt'")
    assert block[2].endswith(", messages")
    assert block[3] == f"  chat template  file '{template}' (data.chat_template)"
    assert len(block) == 4  # nothing skipped
    assert module.renderings["train"].use_template


def test_string_rows_with_the_chat_template_and_without(tmp_path, bpe_tokenizer_dir, logged):
    row = {"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "No."}
    path = _write(tmp_path / "pairs.jsonl", [json.dumps(row)] * 2)
    module = _setup(tmp_path, path, bpe_tokenizer_dir, chat_template=True)
    assert _block(logged, "train")[3] == f"  chat template  the tokenizer's own ({bpe_tokenizer_dir})"
    assert module.renderings["train"].use_template
    logged.clear()
    module = _setup(tmp_path, path, bpe_tokenizer_dir, chat_template=False)
    assert _block(logged, "train")[3] == "  chat template  none: data.chat_template is false"
    assert not module.renderings["train"].use_template


def test_the_synthetic_data_says_why_it_has_no_template(tmp_path, logged):
    from betadpo_lightning.data.synthetic import SyntheticConfig

    module = PreferenceDataModule(
        cache_dir=str(tmp_path / "cache"), synthetic=SyntheticConfig(train_size=16, validation_size=4)
    )
    module.prepare_data()
    module.setup("fit")
    for split, rows in (("train", 16), ("validation", 4)):
        block = _block(logged, split)
        assert block[1] == f"  read           {rows} rows of split '{split}' of 'synthetic'"
        assert block[3] == "  chat template  none: the synthetic dataset's rows are raw text"
