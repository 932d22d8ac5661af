"""Data layouts users have: LLaMA-Factory's ShareGPT preference rows, single messages, content parts; unknown tokens."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from betadpo_lightning.data import ColumnNames, PreferenceDataError, PreferenceDataModule, SplitStats
from betadpo_lightning.data.formats import ResolvedFormat, resolve_format
from betadpo_lightning.data.messages import as_message, as_messages, as_response

pytestmark = [
    pytest.mark.filterwarnings("ignore:tokenizer .* has no pad token:UserWarning"),
    pytest.mark.filterwarnings("ignore:dataset .* has no split 'validation':UserWarning"),
]

NAMES = ColumnNames()
SYSTEM, QUESTION, GOOD, BAD = "Be brief.", "Say hello world", "hello world", "world hello"


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _ready(tmp_path: Path, rows: list[dict], tokenizer: Path, name: str = "pairs", **kwargs) -> PreferenceDataModule:
    module = PreferenceDataModule(
        dataset=str(_write(tmp_path / f"{name}.jsonl", rows)),
        tokenizer=str(tokenizer),
        cache_dir=str(tmp_path / "cache"),
        **kwargs,
    )
    module.prepare_data()
    module.setup("fit")
    return module


def sharegpt(role: str, text: str) -> dict[str, str]:
    return {"from": role, "value": text}


def message(role: str, text: object) -> dict[str, object]:
    return {"role": role, "content": text}


def text_parts(*texts: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": text} for text in texts]


# One pair in every layout; all must give the same token ids.
LAYOUTS = {
    "llama_factory_sharegpt": {
        "conversations": [sharegpt("system", SYSTEM), sharegpt("human", QUESTION)],
        "chosen": sharegpt("gpt", GOOD),
        "rejected": sharegpt("gpt", BAD),
    },
    "conversations_role_content": {
        "conversations": [message("system", SYSTEM), message("user", QUESTION)],
        "chosen": message("assistant", GOOD),
        "rejected": message("assistant", BAD),
    },
    "message_lists": {
        "prompt": [message("system", SYSTEM), message("user", QUESTION)],
        "chosen": [message("assistant", GOOD)],
        "rejected": [message("assistant", BAD)],
    },
    "string_responses": {
        "prompt": [message("system", SYSTEM), message("user", QUESTION)],
        "chosen": GOOD,
        "rejected": BAD,
    },
    "content_parts": {
        "prompt": [message("system", text_parts(SYSTEM)), message("user", text_parts("Say hello", " world"))],
        "chosen": [message("assistant", text_parts("hello", " ", "world"))],
        "rejected": [message("assistant", text_parts(BAD))],
    },
}


def test_every_layout_gives_the_same_pairs(bpe_tokenizer_dir: Path, tmp_path: Path):
    pairs = {}
    for name, row in LAYOUTS.items():
        module = _ready(tmp_path, [row, row], bpe_tokenizer_dir, name=name)
        assert module.stats["train"].kept == 2, name
        pairs[name] = module.splits["train"].select_columns(["prompt_input_ids", "chosen_input_ids"])[:]
    tokenizer = module.tokenizer
    prompt = pairs["message_lists"]["prompt_input_ids"][0]
    assert tokenizer.decode(prompt) == (
        f"<s><|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.decode(pairs["message_lists"]["chosen_input_ids"][0]) == f"{GOOD}<|im_end|>\n"
    for name, columns in pairs.items():
        assert columns == pairs["message_lists"], name


def test_sharegpt_layout_is_detected():
    columns = {key: [value] for key, value in LAYOUTS["llama_factory_sharegpt"].items()}
    assert resolve_format(columns, NAMES) == ResolvedFormat("conversational", messages=True, prompt="conversations")
    with_prompt = {**columns, "prompt": ["q"]}  # the configured prompt column wins
    assert resolve_format(with_prompt, NAMES) == ResolvedFormat("conversational", messages=True)
    strings = {"prompt": [[message("user", "q")]], "chosen": ["a"], "rejected": ["b"]}
    assert resolve_format(strings, NAMES) == ResolvedFormat("conversational", messages=True)
    single = {"chosen": [sharegpt("gpt", "a")], "rejected": [sharegpt("gpt", "b")]}
    with pytest.raises(PreferenceDataError, match="single messages in 'chosen' need a prompt column"):
        resolve_format(single, NAMES)


def test_sharegpt_roles():
    assert as_messages([sharegpt("human", "q"), sharegpt("gpt", "a"), sharegpt("system", "s")], 0, "c") == [
        message("user", "q"),
        message("assistant", "a"),
        message("system", "s"),
    ]
    assert as_message({"from": "user", "value": "q", "role": None}, 0, "c", 0) == message("user", "q")
    for role in ("function_call", "observation"):
        with pytest.raises(
            PreferenceDataError, match=rf"message 1: ShareGPT turns from '{role}' .*not supported"
        ) as info:
            as_messages([sharegpt("human", "q"), sharegpt(role, "{}")], 4, "conversations")
        assert (info.value.row, info.value.field, info.value.reason) == (4, "conversations", "unsupported_role")
    with pytest.raises(PreferenceDataError, match="unknown ShareGPT role 'bot'; expected 'from' to be one of"):
        as_response(sharegpt("bot", "a"), 0, "chosen")
    with pytest.raises(PreferenceDataError, match="expected a string 'role' and a string 'content'"):
        as_response({"from": "gpt", "value": 3}, 0, "chosen")


def test_content_parts():
    assert as_message(message("user", text_parts("a", "b")), 0, "prompt", 0) == message("user", "ab")
    with_none = [{"type": "text", "text": "a", "image": None}]  # as datasets fills the keys of other parts
    assert as_message(message("user", with_none), 0, "prompt", 0) == message("user", "a")
    image = [*text_parts("look: "), {"type": "image_url", "image_url": {"url": "x.png"}, "text": None}]
    with pytest.raises(PreferenceDataError, match=r"content part 1 is of type 'image_url'; only text parts") as info:
        as_message(message("user", image), 2, "prompt", 0)
    assert info.value.reason == "non_text_content"
    for malformed in ([{"type": "text"}], ["a"], [{}]):
        with pytest.raises(PreferenceDataError, match="expected a string 'role' and a string 'content'") as info:
            as_message(message("user", malformed), 2, "prompt", 0)
        assert info.value.reason == "bad_messages"


def test_bad_layout_rows_are_skipped_and_counted(bpe_tokenizer_dir: Path, tmp_path: Path):
    good = LAYOUTS["llama_factory_sharegpt"]
    tool = {**good, "conversations": [sharegpt("human", QUESTION), sharegpt("function_call", "{}")]}
    blank = {**good, "chosen": sharegpt("gpt", " ")}
    rows = [good, tool, blank, good]
    with pytest.raises(PreferenceDataError, match=r"line 2, field 'conversations': message 1: ShareGPT"):
        _ready(tmp_path, rows, bpe_tokenizer_dir)
    with pytest.warns(UserWarning, match="2/4 pairs kept; skipped empty_text=1, unsupported_role=1"):
        module = _ready(tmp_path, rows, bpe_tokenizer_dir, on_bad_row="skip")
    assert list(module.splits["train"]["index"]) == [0, 3]


def test_image_parts_are_refused(bpe_tokenizer_dir: Path, tmp_path: Path):
    rows = [LAYOUTS["content_parts"], LAYOUTS["content_parts"]]
    rows[1] = {**rows[1], "prompt": [message("user", [*text_parts("What is this?"), {"type": "image", "text": None}])]}
    with pytest.raises(PreferenceDataError, match=r"line 2, field 'prompt': message 0: content part 1 .*'image'"):
        _ready(tmp_path, rows, bpe_tokenizer_dir)


# --- unknown tokens ---------------------------------------------------------------------------------------------------


@pytest.fixture
def synthetic_tokenizer_dir(synthetic_tokenizer, tmp_path: Path) -> Path:
    synthetic_tokenizer.save_pretrained(str(tmp_path / "synthetic-tokenizer"))
    return tmp_path / "synthetic-tokenizer"


def _pair(prompt: str) -> dict[str, str]:
    return {"prompt": prompt, "chosen": "a clear answer", "rejected": "a vague answer"}


def test_unknown_tokens_are_counted_and_warned_about(synthetic_tokenizer_dir: Path, tmp_path: Path):
    # Each pair: <s> + 3 prompt words, then 3 words + </s> per response: 12 tokens.
    rows = [_pair("explain the river"), _pair("explain quantum chromodynamics"), _pair("explain the river")]
    with pytest.warns(UserWarning, match="unknown token") as caught:
        module = _ready(tmp_path, rows, synthetic_tokenizer_dir)
    stats = module.stats["train"]
    assert (stats.tokens, stats.unknown_tokens, stats.unknown_example) == (36, 2, 1)
    warning = [str(item.message) for item in caught if "unknown token" in str(item.message)]
    assert len(warning) == 1  # once for the split
    assert warning[0].startswith("preference data 'train': 2 of 36 prompt and response tokens (5.6%) are the tokenizer")
    assert "first in row 2" in warning[0]  # 1-based
    assert "data.tokenizer" in warning[0]
    ids = module.splits["train"][1]["prompt_input_ids"]
    assert ids.count(module.tokenizer.unk_token_id) == 2


def test_few_unknown_tokens_are_counted_without_warning(synthetic_tokenizer_dir: Path, tmp_path: Path, recwarn):
    rows = [_pair("explain the river")] * 9 + [_pair("explain the zebra")]  # 1 unknown of 120 tokens
    module = _ready(tmp_path, rows, synthetic_tokenizer_dir, val_split=None)
    stats = module.stats["train"]
    assert (stats.tokens, stats.unknown_tokens, stats.unknown_example) == (120, 1, 9)
    assert stats.summary("train") == "preference data 'train': 10/10 pairs kept; unknown tokens 1/120 (0.8%)"
    assert not [item for item in recwarn if "unknown token" in str(item.message)]


def test_known_text_has_no_unknown_tokens(synthetic_tokenizer_dir: Path, tmp_path: Path):
    module = _ready(tmp_path, [_pair("explain the river")] * 2, synthetic_tokenizer_dir, val_fraction=0.5)
    for split in ("train", "validation"):
        assert (module.stats[split].tokens, module.stats[split].unknown_tokens) == (12, 0)
        assert module.stats[split].unknown_example is None


def test_unknown_tokens_are_found_in_every_part_and_row():
    rows = {
        "prompt_input_ids": [[2, 4], [2, 4, 4], [2]],
        "chosen_input_ids": [[5, 3], [6, 3], [1, 1, 3]],  # unknown (id 1) in the third pair's chosen response
        "rejected_input_ids": [[7, 3], [8, 1, 3], [9, 3]],  # and in the second pair's rejected response
        "index": [5, 6, 7],
        "status": ["ok", "ok", "ok"],
        "truncation": ["none", "none", "none"],
    }
    stats = SplitStats.from_tokenized(datasets.Dataset.from_dict(rows), unk_token_id=1)
    assert (stats.tokens, stats.unknown_tokens, stats.unknown_example) == (20, 3, 6)
    assert stats.unknown_warning("validation").startswith("preference data 'validation': 3 of 20 prompt")
    assert SplitStats.from_tokenized(datasets.Dataset.from_dict(rows), unk_token_id=None).unknown_tokens == 0
