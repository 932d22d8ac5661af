"""PreferenceDataModule on bad input: bad rows, missing columns or templates, unknown splits, invalid options."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from betadpo_lightning.data import PreferenceDataError, PreferenceDataModule, SyntheticConfig

pytestmark = [
    pytest.mark.filterwarnings("ignore:tokenizer .* has no pad token:UserWarning"),
    pytest.mark.filterwarnings("ignore:dataset .* has no split 'validation':UserWarning"),
]


def _ready(**kwargs) -> PreferenceDataModule:
    module = PreferenceDataModule(**kwargs)
    module.prepare_data()
    module.setup("fit")
    return module


def test_bad_rows_error_mode(fixtures_dir: Path, bpe_tokenizer_dir: Path, tmp_path: Path):
    module = PreferenceDataModule(dataset=str(fixtures_dir / "bad_rows.jsonl"), tokenizer=str(bpe_tokenizer_dir),
                                  cache_dir=str(tmp_path), val_split=None)  # fmt: skip
    expected = r"^split 'train', file '.*bad_rows.jsonl', line 2, field 'rejected': expected 'rejected' to differ"
    with pytest.raises(PreferenceDataError, match=expected):
        module.prepare_data()


def test_bad_rows_skip_mode_counts_and_logs(fixtures_dir: Path, bpe_tokenizer_dir: Path, tmp_path: Path):
    with pytest.warns(UserWarning, match=r"2/7 pairs kept; skipped empty_text=2, identical_pair=1, missing_value=1"):
        module = _ready(dataset=str(fixtures_dir / "bad_rows.jsonl"), tokenizer=str(bpe_tokenizer_dir),
                        cache_dir=str(tmp_path), val_split=None, on_bad_row="skip")  # fmt: skip
    stats = module.stats["train"]
    assert (stats.rows, stats.kept) == (7, 2)
    assert stats.skipped == {"identical_pair": 1, "empty_text": 2, "missing_value": 1, "not_text": 1}
    assert stats.dropped == {}
    assert list(module.splits["train"]["index"]) == [0, 6]


def test_no_training_pair_left_is_an_error(tmp_path: Path, bpe_tokenizer_dir: Path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n", encoding="utf-8")
    module = PreferenceDataModule(dataset=str(data), tokenizer=str(bpe_tokenizer_dir), cache_dir=str(tmp_path),
                                  val_split=None, on_bad_row="skip")  # fmt: skip
    module.prepare_data()
    with (
        pytest.warns(UserWarning, match="skipped identical_pair=1"),
        pytest.raises(PreferenceDataError, match=r"no training pair is left after tokenization: .* 0/1 pairs kept"),
    ):
        module.setup("fit")


def test_missing_column_lists_available_columns(fixtures_dir: Path, bpe_tokenizer_dir: Path, tmp_path: Path):
    module = PreferenceDataModule(dataset=str(fixtures_dir / "standard.jsonl"), tokenizer=str(bpe_tokenizer_dir),
                                  cache_dir=str(tmp_path), chosen_column="better")  # fmt: skip
    with pytest.raises(PreferenceDataError, match=r"missing column 'better'.*\['chosen', 'prompt', 'rejected'\]"):
        module.prepare_data()


def test_missing_chat_template_for_conversational_data(fixtures_dir, bpe_tokenizer_dir: Path, tmp_path: Path):
    plain = tmp_path / "tokenizer"
    shutil.copytree(bpe_tokenizer_dir, plain)
    (plain / "chat_template.jinja").unlink()
    module = PreferenceDataModule(dataset=str(fixtures_dir / "ultrafeedback.jsonl"), tokenizer=str(plain),
                                  cache_dir=str(tmp_path / "cache"))  # fmt: skip
    with pytest.raises(PreferenceDataError, match=rf"tokenizer '{plain}' has no chat template"):
        module.prepare_data()
    # The fix the message suggests: a template passed through tokenizer_kwargs.
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    template += "{% if add_generation_prompt %}[assistant] {% endif %}"
    fixed = _ready(dataset=str(fixtures_dir / "ultrafeedback.jsonl"), tokenizer=str(plain), val_split=None,
                   tokenizer_kwargs={"chat_template": template}, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    prompt = fixed.tokenizer.decode(fixed.splits["train"][0]["prompt_input_ids"], skip_special_tokens=True)
    assert prompt == "[user] Write a haiku about autumn leaves.\n[assistant] "


def test_unknown_split_and_suffix(fixtures_dir: Path, bpe_tokenizer_dir: Path, tmp_path: Path):
    folder = tmp_path / "two-splits"  # neither the configured split nor 'train', and more than one split
    folder.mkdir()
    for split in ("first", "second"):
        shutil.copy(fixtures_dir / "standard.jsonl", folder / f"{split}.jsonl")
    files = {split: str(folder / f"{split}.jsonl") for split in ("first", "second")}
    module = PreferenceDataModule(dataset="json", data_files=files, tokenizer=str(bpe_tokenizer_dir),
                                  cache_dir=str(tmp_path), train_split="train_prefs")  # fmt: skip
    with pytest.raises(PreferenceDataError, match=r"no split 'train_prefs' and no 'train'.*\['first', 'second'\]"):
        module.prepare_data()
    odd = tmp_path / "pairs.txt"
    odd.write_text("x")
    with pytest.raises(PreferenceDataError, match="cannot tell the format"):
        PreferenceDataModule(dataset=str(odd), tokenizer=str(bpe_tokenizer_dir), cache_dir=str(tmp_path)).prepare_data()


def test_loaders_before_setup_raise(tmp_path: Path):
    module = PreferenceDataModule(cache_dir=str(tmp_path), synthetic=SyntheticConfig(train_size=8, validation_size=0))
    with pytest.raises(RuntimeError, match="call prepare_data"):
        module.train_dataloader()
    with pytest.raises(RuntimeError, match="call prepare_data"):
        module.setup("fit")  # synthetic files are written by prepare_data


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "some/hub-dataset"}, "needs a tokenizer"),
        ({"dataset": "x.jsonl", "tokenizer": "t", "synthetic": SyntheticConfig()}, "synthetic options"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"on_bad_row": "ignore"}, "on_bad_row"),
        ({"format": "sharegpt"}, "format"),
        ({"max_length": 1}, "max_length"),
    ],
)
def test_invalid_options(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        PreferenceDataModule(**kwargs)
