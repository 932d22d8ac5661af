"""``betadpo-preview``: one pair shown as training sees it, from a shipped config and a user's file, no model built."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from betadpo_lightning.commands import data_preview
from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.training.module import PreferenceModule
from helpers.user_files import neox_like_tokenizer, qwen2_like_tokenizer, read_rows, write_rows

pytestmark = pytest.mark.filterwarnings("ignore:tokenizer .* has no pad token:UserWarning")

ROOT = Path(__file__).parents[1]
UF_CONFIG = ROOT / "configs" / "ultrafeedback_qwen2.5_0.5b_beta_dpo.yaml"
HH_CONFIG = ROOT / "configs" / "hh_pythia410m_beta_dpo.yaml"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("preview-tokenizers")
    qwen2_like_tokenizer().save_pretrained(str(root / "qwen2"))
    neox_like_tokenizer().save_pretrained(str(root / "neox"))
    return {"qwen2": root / "qwen2", "neox": root / "neox"}


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the policy (or even the module) fails: the preview must not need it."""
    for name in ("__init__", "configure_model"):
        original = getattr(PreferenceModule, name)

        @functools.wraps(original)  # the same signature: the command line still parses the model section
        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("the preview built the model")

        monkeypatch.setattr(PreferenceModule, name, refuse)


def _preview(config: Path, dataset: Path, tokenizer: Path, *extra: str) -> list[str]:
    args = ["--config", str(config), f"--data.dataset={dataset}", f"--data.tokenizer={tokenizer}"]
    args += [f"--data.cache_dir={dataset.parent / 'cache'}", *extra]
    return [str(arg) for arg in args]


def test_preview_of_string_rows_under_a_chat_config(tokenizers, tmp_path: Path, capsys, no_model):
    rows = read_rows("ultrafeedback_strings.jsonl")
    dataset = write_rows(tmp_path / "mine.jsonl", rows)
    assert data_preview.main(_preview(UF_CONFIG, dataset, tokenizers["qwen2"], "--row=2")) == 0
    out = capsys.readouterr().out
    assert f"data preview: row 2 of split 'train' of '{dataset}' (6 rows)" in out
    assert "note: dataset" in out
    assert "has no split 'train_prefs'; training on its split 'train'" in out
    assert "format: conversational (forced): prompt from 'prompt', responses from 'chosen'/'rejected', strings" in out
    assert f"chat template: the tokenizer's own ({tokenizers['qwen2']})" in out
    # The counts and texts are those of training: the same row through the data module.
    settings = {"format": "conversational", "max_length": 1024, "max_prompt_length": 512}
    tokenizer = str(tokenizers["qwen2"])
    module = PreferenceDataModule(dataset=str(dataset), tokenizer=tokenizer, cache_dir=str(tmp_path / "c"), **settings)
    module.prepare_data()
    module.setup("fit")
    pair = module.splits["train"][2]
    counts = (len(pair["prompt_input_ids"]), len(pair["chosen_input_ids"]), len(pair["rejected_input_ids"]))
    assert "tokens: prompt {}, chosen {}, rejected {} (max_length 1024".format(*counts) in out
    decode = module.tokenizer.decode
    chosen = f"{decode(pair['prompt_input_ids'])}⟦{decode(pair['chosen_input_ids'])}⟧"
    assert chosen in out
    turns = f"<|im_start|>user\n{rows[2]['prompt']}<|im_end|>\n<|im_start|>assistant\n"
    assert chosen.endswith(f"{turns}⟦{rows[2]['chosen']}<|im_end|>\n⟧")
    assert f"⟦{rows[2]['rejected']}<|im_end|>\n⟧" in out


def test_preview_of_hh_transcripts_and_of_the_v1_layout(tokenizers, tmp_path: Path, capsys, no_model):
    hh = write_rows(tmp_path / "hh.jsonl", read_rows("hh_rlhf.jsonl"))
    assert data_preview.main(_preview(HH_CONFIG, hh, tokenizers["neox"])) == 0
    out = capsys.readouterr().out
    assert "format: implicit (detected): the prompt is what 'chosen' and 'rejected' (transcripts) share" in out
    assert "chat template: none: rows are raw text" in out
    assert "\n\nHuman: How do I get candle wax out of a tablecloth?\n\nAssistant:⟦ Let the wax harden" in out
    assert "a warm iron; the paper soaks up the rest.<|endoftext|>⟧" in out  # EOS appended
    v1 = write_rows(tmp_path / "v1.jsonl", read_rows("llama_factory_v1_dpo.jsonl"))
    assert data_preview.main(_preview(UF_CONFIG, v1, tokenizers["qwen2"], "--row=1")) == 0
    out = capsys.readouterr().out
    assert "format: implicit (forced): the prompt is what 'chosen_messages' and 'rejected_messages'" in out
    assert "<|im_start|>system\nYou are a programming tutor.<|im_end|>\n<|im_start|>user\nWhat is the diff" in out


def test_preview_names_what_is_wrong(tokenizers, tmp_path: Path, capsys, no_model):
    rows = read_rows("ultrafeedback_strings.jsonl")
    rows[1] = {**rows[1], "rejected": rows[1]["chosen"]}
    dataset = write_rows(tmp_path / "mine.jsonl", rows)
    assert data_preview.main(_preview(UF_CONFIG, dataset, tokenizers["qwen2"], "--row=9")) == 1
    assert "error: --row 9: split 'train' has 6 rows (0 to 5)" in capsys.readouterr().err
    assert data_preview.main(_preview(UF_CONFIG, dataset, tokenizers["qwen2"], "--row=1")) == 1  # skipped in training
    assert (
        "error: bad preference data: row 1, field 'rejected': expected 'rejected' to differ" in capsys.readouterr().err
    )
    missing = _preview(UF_CONFIG, dataset, tokenizers["qwen2"], "--data.chat_template=my_template.jinja")
    assert data_preview.main(missing) == 1
    assert (
        "error: data.chat_template: the chat_template file 'my_template.jinja' does not exist"
        in capsys.readouterr().err
    )
    assert data_preview.main(_preview(UF_CONFIG, dataset, tokenizers["qwen2"], "--split=test")) == 1
    assert "--split test: the configuration sets no test split (data.test_split)" in capsys.readouterr().err


def test_preview_is_a_console_script_with_help(capsys):
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["betadpo-preview"] == "betadpo_lightning.commands.data_preview:main"
    with pytest.raises(SystemExit) as info:
        data_preview.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--row" in out
    assert "--data.chat_template" in out
