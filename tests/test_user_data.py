"""Users' own preference files: LLaMA-Factory v1 content parts, string rows under a chat template, template files,
split names that fall back, and no unknown-token false alarm with GPT-NeoX's tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from betadpo_lightning.data import ColumnNames, PreferenceDataError, PreferenceDataModule, SyntheticConfig
from betadpo_lightning.data.formats import V1_RESPONSE_COLUMNS, ResolvedFormat, resolve_format
from betadpo_lightning.data.messages import as_message
from betadpo_lightning.data.split_names import choose_split
from betadpo_lightning.data.templates import parse_chat_template
from betadpo_lightning.data.tokenize import unknown_token_id
from helpers.user_files import QWEN2_TEMPLATE, neox_like_tokenizer, qwen2_like_tokenizer, read_rows, write_rows

pytestmark = [
    pytest.mark.filterwarnings("ignore:tokenizer .* has no pad token:UserWarning"),
    pytest.mark.filterwarnings("ignore:dataset .* has no split 'validation':UserWarning"),
]

TRIPLES = [(row["prompt"], row["chosen"], row["rejected"]) for row in read_rows("ultrafeedback_strings.jsonl")]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qwen2-tokenizer")
    qwen2_like_tokenizer().save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def plain_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qwen2-tokenizer-without-template")
    qwen2_like_tokenizer(chat_template=None).save_pretrained(str(path))
    return path


def _ready(path: Path, tokenizer: Path, **kwargs) -> PreferenceDataModule:
    module = PreferenceDataModule(
        dataset=str(path), tokenizer=str(tokenizer), cache_dir=str(path.parent / "cache"), **kwargs
    )
    module.prepare_data()
    module.setup("fit")
    return module


def _ids(module: PreferenceDataModule) -> list[list[list[int]]]:
    columns = module.splits["train"].select_columns(["prompt_input_ids", "chosen_input_ids", "rejected_input_ids"])[:]
    return [columns[name] for name in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")]


def _v1(role: str, text: str) -> dict:
    return {"role": role, "content": [{"type": "text", "value": text}], "loss_weight": float(role == "assistant")}


def _turn(role: str, text: str) -> dict:
    return {"role": role, "content": text}


# One set of pairs in every layout users bring; all must give the token ids of the message-list rows.
LAYOUTS = {
    "ultrafeedback_messages": lambda p, c, r: {"prompt": p, "chosen": [_turn("user", p), _turn("assistant", c)],
                                               "rejected": [_turn("user", p), _turn("assistant", r)]},
    "ultrafeedback_strings": lambda p, c, r: {"prompt": p, "chosen": c, "rejected": r},
    "trl_implicit_messages": lambda p, c, r: {"chosen": [_turn("user", p), _turn("assistant", c)],
                                              "rejected": [_turn("user", p), _turn("assistant", r)]},
    "llama_factory_sharegpt": lambda p, c, r: {"conversations": [{"from": "human", "value": p}],
                                               "chosen": {"from": "gpt", "value": c},
                                               "rejected": {"from": "gpt", "value": r}},
    "llama_factory_v1": lambda p, c, r: {"chosen_messages": [_v1("user", p), _v1("assistant", c)],
                                         "rejected_messages": [_v1("user", p), _v1("assistant", r)]},
    "openai_text_parts": lambda p, c, r: {"prompt": [_turn("user", [{"type": "text", "text": p}])],
                                          "chosen": [_turn("assistant", [{"type": "text", "text": c}])],
                                          "rejected": [_turn("assistant", [{"type": "text", "text": r}])]},
}  # fmt: skip


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_trains_under_the_ultrafeedback_settings(layout: str, qwen_dir: Path, tmp_path: Path):
    """``format: conversational`` as the UltraFeedback configs force it; the reference is rendered by hand."""
    rows = [LAYOUTS[layout](*triple) for triple in TRIPLES]
    module = _ready(write_rows(tmp_path / "pairs.jsonl", rows), qwen_dir, format="conversational")
    prompts, chosen, _ = _ids(module)
    tokenizer = module.tokenizer
    for (prompt, answer, _), prompt_ids, chosen_ids in zip(TRIPLES, prompts, chosen, strict=True):
        assert tokenizer.decode(prompt_ids) == (
            f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        assert tokenizer.decode(chosen_ids) == f"{answer}<|im_end|>\n"  # the template's EOS ends it, none appended


def test_string_rows_under_a_template_equal_standard_rows_wrapped(qwen_dir: Path, tmp_path: Path):
    rows = [LAYOUTS["ultrafeedback_strings"](*triple) for triple in TRIPLES]
    path = write_rows(tmp_path / "strings.jsonl", rows)
    forced = _ready(path, qwen_dir, format="conversational")
    wrapped = _ready(path, qwen_dir, chat_template=True)
    assert _ids(forced) == _ids(wrapped)
    raw = _ready(path, qwen_dir, chat_template=False)
    assert raw.tokenizer.decode(_ids(raw)[0][0]) == TRIPLES[0][0]  # standard rows as raw text when asked


def test_v1_layout_is_detected_and_its_parts_read():
    row = read_rows("llama_factory_v1_dpo.jsonl")[1]  # with a system turn
    columns = {key: [value] for key, value in row.items()}
    expected = ResolvedFormat("implicit", messages=True, responses=V1_RESPONSE_COLUMNS)
    assert resolve_format(columns, ColumnNames()) == expected
    assert resolve_format(columns, ColumnNames(), "conversational") == expected  # whole conversations, no prompt
    message = as_message(row["chosen_messages"][0], 0, "chosen_messages", 0)
    assert message == {"role": "system", "content": "You are a programming tutor.", "loss_weight": 0.0}
    parts = [{"type": "text", "value": "a"}, {"type": "text", "text": "b"}]  # both spellings, joined in order
    assert as_message(_turn("user", parts), 0, "prompt", 0)["content"] == "ab"


NON_TEXT = [
    ({"type": "image", "value": "cat.png"}, "'image'"),
    ({"type": "tool_call", "value": "{}"}, "'tool_call'; tool"),
]


@pytest.mark.parametrize(("part", "shown"), NON_TEXT)
def test_non_text_parts_are_refused_and_counted(part: dict, shown: str, qwen_dir: Path, tmp_path: Path):
    with pytest.raises(PreferenceDataError, match=f"content part 1 is of type {shown}") as info:
        as_message(_turn("assistant", [{"type": "text", "value": "x"}, part]), 3, "chosen_messages", 1)
    assert (info.value.row, info.value.reason) == (3, "non_text_content")
    rows = [LAYOUTS["llama_factory_v1"](*triple) for triple in TRIPLES]
    rows[2]["chosen_messages"][1]["content"].append(part)
    with pytest.warns(UserWarning, match="5/6 pairs kept; skipped non_text_content=1"):
        _ready(write_rows(tmp_path / "v1.jsonl", rows), qwen_dir, on_bad_row="skip")


def test_raw_string_rows_warn_only_when_a_template_goes_unused(qwen_dir: Path, tmp_path: Path, recwarn):
    path = write_rows(tmp_path / "strings.jsonl", [LAYOUTS["ultrafeedback_strings"](*t) for t in TRIPLES])
    _ready(path, qwen_dir)
    warned = [str(w.message) for w in recwarn if "used as raw text" in str(w.message)]
    assert warned
    assert "data.chat_template true" in warned[0]
    recwarn.clear()
    _ready(path, qwen_dir, chat_template=False)  # asked for raw text
    neox = tmp_path / "neox"
    neox_like_tokenizer().save_pretrained(str(neox))
    _ready(path, neox)  # a tokenizer without a template: raw text is all there is
    module = PreferenceDataModule(cache_dir=str(tmp_path / "synthetic"), synthetic=SyntheticConfig(train_size=8))
    module.prepare_data()
    module.setup("fit")  # the synthetic rows are raw text by design
    assert not [w for w in recwarn if "used as raw text" in str(w.message)]


def test_chat_template_file_and_inline_text(plain_qwen_dir: Path, qwen_dir: Path, tmp_path: Path):
    rows = [LAYOUTS["ultrafeedback_messages"](*triple) for triple in TRIPLES]
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    template = tmp_path / "qwen2.jinja"
    template.write_text(QWEN2_TEMPLATE, encoding="utf-8")
    own = _ready(path, qwen_dir)  # the tokenizer's own template
    from_file = _ready(path, plain_qwen_dir, chat_template=str(template))
    inline = _ready(path, plain_qwen_dir, chat_template=QWEN2_TEMPLATE)
    assert _ids(from_file) == _ids(inline) == _ids(own)
    assert from_file.tokenizer.chat_template == QWEN2_TEMPLATE
    # The checkpoint records the template itself, and the exported tokenizer gets it through tokenizer_kwargs.
    hparams = from_file.hparams
    assert hparams["chat_template"] == hparams["tokenizer_kwargs"]["chat_template"] == QWEN2_TEMPLATE
    restored = _ready(path, plain_qwen_dir, **{k: from_file.hparams[k] for k in ("chat_template", "tokenizer_kwargs")})
    assert _ids(restored) == _ids(own)
    standard = write_rows(tmp_path / "strings.jsonl", [LAYOUTS["ultrafeedback_strings"](*t) for t in TRIPLES])
    assert _ids(_ready(standard, plain_qwen_dir, chat_template=str(template))) == _ids(own)  # strings as turns


def test_chat_template_option_errors(tmp_path: Path):
    missing = tmp_path / "nope.jinja"
    with pytest.raises(ValueError, match=rf"^the chat_template file '{missing}' does not exist"):
        parse_chat_template(str(missing))
    with pytest.raises(ValueError, match="is a folder"):
        parse_chat_template(str(tmp_path))
    empty = tmp_path / "empty.jinja"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"file '.*empty\.jinja' is empty"):
        parse_chat_template(str(empty))
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}", encoding="utf-8")
    with pytest.raises(ValueError, match=r"chat_template \(file '.*broken.jinja'\) is not a valid Jinja .* at line 2"):
        parse_chat_template(str(broken))
    with pytest.raises(ValueError, match="chat_template must be 'auto', true, false, a template file"):
        parse_chat_template(3)
    with pytest.raises(ValueError, match="both set a template"):
        parse_chat_template("{{ messages }}").tokenizer_kwargs({"chat_template": "{{ other }}"})
    with pytest.raises(ValueError, match=r"the chat_template file 'no/such\.jinja' does not exist"):
        PreferenceDataModule(dataset="x.jsonl", tokenizer="t", chat_template="no/such.jinja")


def test_gpt_neox_unknown_token_is_not_a_false_alarm(tmp_path: Path, synthetic_tokenizer, recwarn):
    neox = neox_like_tokenizer()
    assert neox.unk_token_id == neox.eos_token_id == neox.bos_token_id == 0
    assert unknown_token_id(neox) is None
    assert unknown_token_id(synthetic_tokenizer) == synthetic_tokenizer.unk_token_id is not None
    assert unknown_token_id(qwen2_like_tokenizer()) is None  # no unknown token at all
    neox.save_pretrained(str(tmp_path / "neox"))
    module = _ready(write_rows(tmp_path / "hh.jsonl", read_rows("hh_rlhf.jsonl")), tmp_path / "neox")
    assert module.stats["train"].unknown_tokens == 0
    assert not [w for w in recwarn if "unknown token" in str(w.message)]
    prompts, chosen, rejected = _ids(module)  # what was counted before: the appended EOS, twice per pair
    assert sum(ids.count(0) for part in (prompts, chosen, rejected) for ids in part) == 2 * len(prompts)


def test_split_choice():
    assert choose_split(["train_prefs", "test_prefs"], "train_prefs", "train") == "train_prefs"
    assert choose_split(["train"], "train_prefs", "train") == "train"
    assert choose_split(["pairs"], "train", "train") == "pairs"  # the only split
    with pytest.raises(PreferenceDataError, match=r"no split 'x' and no 'train' split .*\['a', 'b'\]"):
        choose_split(["a", "b"], "x", "train")
    assert choose_split(["train", "dev", "test"], "test_prefs", "validation", exclude="train") == "dev"
    assert choose_split(["train", "dev", "test"], "test_prefs", "test", exclude="train") == "test"
    assert choose_split(["train"], "validation", "validation", exclude="train") is None


def test_configured_splits_fall_back_with_a_note(qwen_dir: Path, tmp_path: Path):
    rows = [LAYOUTS["ultrafeedback_messages"](*triple) for triple in TRIPLES]
    folder = tmp_path / "data"
    write_rows(folder / "train.jsonl", rows)
    write_rows(folder / "test.jsonl", rows[:2])
    with pytest.warns(UserWarning, match="has no split") as caught:
        module = _ready(folder, qwen_dir, train_split="train_prefs", val_split="test_prefs", test_split="test_gen")
    notes = [str(w.message) for w in caught if "has no split" in str(w.message)]
    assert (
        f"dataset '{folder}' has no split 'train_prefs'; training on its split 'train' (set data.train_split)" in notes
    )
    assert any("no split 'test_prefs'; validating on its split 'test'" in note for note in notes)
    assert any("no split 'test_gen'; testing on its split 'test'" in note for note in notes)
    assert (module.stats["train"].kept, module.stats["validation"].kept, module.stats["test"].kept) == (6, 2, 2)


def test_a_single_file_with_hub_split_names(qwen_dir: Path, tmp_path: Path):
    rows = [LAYOUTS["ultrafeedback_messages"](*triple) for triple in TRIPLES]
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"prompt": "cut off\n')  # a malformed line, counted under the configured split's name
    with pytest.warns(UserWarning, match="has no split 'test_prefs'.*training without validation.*val_fraction"):
        module = _ready(path, qwen_dir, train_split="train_prefs", val_split="test_prefs", on_bad_row="skip")
    assert (module.stats["train"].kept, module.stats["train"].skipped) == (6, {"malformed_line": 1})
    assert "validation" not in module.splits
    with pytest.warns(UserWarning, match="no split 'test'.*testing on the validation split instead"):
        held_out = _ready(path, qwen_dir, val_fraction=0.5, test_split="test", on_bad_row="skip")
    assert "test" not in held_out.splits
    tested = [batch["pair_index"].tolist() for batch in held_out.test_dataloader()]
    assert tested == [batch["pair_index"].tolist() for batch in held_out.val_dataloader()]
