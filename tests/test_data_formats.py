"""Format detection, row validation, implicit-prompt extraction and conversational rendering."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from betadpo_lightning.data import ColumnNames, PreferenceDataError
from betadpo_lightning.data.formats import ResolvedFormat, as_messages, as_text, resolve_format
from betadpo_lightning.data.implicit import HH_ASSISTANT_MARKER, split_implicit_messages, split_implicit_text
from betadpo_lightning.data.render import PairRenderer, RenderedPair

NAMES = ColumnNames()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _columns(rows: list[dict]) -> dict[str, list]:
    return {key: [row.get(key) for row in rows] for key in rows[0]}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# --- detection ----------------------------------------------------------------------------------------------------


def test_detects_each_format_from_fixture_columns(fixtures_dir: Path):
    cases = {
        "standard.jsonl": ResolvedFormat("standard", messages=False),
        "ultrafeedback.jsonl": ResolvedFormat("conversational", messages=True),
        "hh_rlhf.jsonl": ResolvedFormat("implicit", messages=False),
        "hh_messages.jsonl": ResolvedFormat("implicit", messages=True),
    }
    for name, expected in cases.items():
        assert resolve_format(_columns(_rows(fixtures_dir / name)), NAMES) == expected, name


def test_detection_looks_past_missing_and_malformed_leading_values():
    columns = {"prompt": ["p", "p", "p"], "chosen": [None, 5, [user("x")]], "rejected": ["a", "b", "c"]}
    assert resolve_format(columns, NAMES) == ResolvedFormat("conversational", messages=True)


def test_forced_implicit_ignores_prompt_column():
    columns = {
        "prompt": ["p"],
        "chosen": ["\n\nHuman: a\n\nAssistant: b"],
        "rejected": ["\n\nHuman: a\n\nAssistant: c"],
    }
    assert resolve_format(columns, NAMES, "implicit") == ResolvedFormat("implicit", messages=False)


def test_missing_column_is_named_with_available_columns():
    columns = {"question": ["q"], "chosen": ["a"], "rejected": ["b"]}
    with pytest.raises(PreferenceDataError, match=r"missing column 'prompt'.*\['chosen', 'question', 'rejected'\]"):
        resolve_format(columns, NAMES, "standard")
    with pytest.raises(PreferenceDataError, match="missing column 'better'") as info:
        resolve_format(columns, ColumnNames(chosen="better"))
    assert info.value.field == "better"
    assert info.value.reason == "missing_column"


def test_forced_format_must_match_the_values():
    text = {"prompt": ["p"], "chosen": ["a"], "rejected": ["b"]}
    messages = {"prompt": ["p"], "chosen": [[assistant("a")]], "rejected": [[assistant("b")]]}
    # Strings forced to "conversational" are one user turn and one assistant turn (rendered with the template).
    assert resolve_format(text, NAMES, "conversational") == ResolvedFormat("conversational", messages=True)
    with pytest.raises(PreferenceDataError, match="'standard' expects strings in 'chosen'"):
        resolve_format(messages, NAMES, "standard")


def test_column_without_any_text_is_rejected():
    with pytest.raises(PreferenceDataError, match=r"column 'chosen'.*found only \['int'\]"):
        resolve_format({"prompt": ["p"], "chosen": [3], "rejected": ["b"]}, NAMES)


def test_error_keeps_row_field_and_reason_across_pickling():
    error = PreferenceDataError("expected text", row=3, field="chosen", reason="not_text")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ValueError)
    assert (str(copy), copy.row, copy.field, copy.reason) == (
        "row 3, field 'chosen': expected text",
        3,
        "chosen",
        "not_text",
    )


# --- field validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason", "message"),
    [
        (None, "missing_value", "missing value"),
        (12, "not_text", "got int"),
        (["x"], "not_text", "got list"),
        ("", "empty_text", "got ''"),
        (" \n ", "empty_text", "got ' \\\\n '"),
    ],
)
def test_as_text_errors_name_row_field_and_expectation(value: object, reason: str, message: str):
    with pytest.raises(
        PreferenceDataError, match=rf"^row 4, field 'chosen': expected a non-empty string, .*{message}"
    ) as info:
        as_text(value, 4, "chosen")
    assert (info.value.row, info.value.field, info.value.reason) == (4, "chosen", reason)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("hi", "got str"),
        ([], "got an empty list"),
        (["hi"], "message 0: expected a dict"),
        ([{"role": "user"}], "message 0: expected a string 'role' and a string 'content'"),
        ([user("a"), {"role": 1, "content": "b"}], "message 1: expected a string 'role'"),
    ],
)
def test_as_messages_errors(value: object, message: str):
    with pytest.raises(PreferenceDataError, match=rf"^row 2, field 'rejected': .*{message}"):
        as_messages(value, 2, "rejected")


def test_as_messages_drops_none_valued_keys():
    messages = as_messages([{"role": "user", "content": "hi", "name": None}], 0, "chosen")
    assert messages == [{"role": "user", "content": "hi"}]


# --- implicit prompts ---------------------------------------------------------------------------------------------


def test_hh_rows_split_after_last_shared_assistant_marker(fixtures_dir: Path):
    for index, row in enumerate(_rows(fixtures_dir / "hh_rlhf.jsonl")):
        prompt, chosen, rejected = split_implicit_text(row["chosen"], row["rejected"], index, NAMES)
        assert prompt.endswith(HH_ASSISTANT_MARKER)
        assert prompt + chosen == row["chosen"]
        assert prompt + rejected == row["rejected"]
        assert chosen.startswith(" ")
        assert rejected.startswith(" ")
        assert HH_ASSISTANT_MARKER not in rejected  # the last shared marker was used


def test_hh_split_cases_by_hand():
    h, a = "\n\nHuman: ", "\n\nAssistant:"
    # Responses sharing their first words: the prompt still ends at the marker, not mid-response.
    assert split_implicit_text(f"{h}q{a} I think yes", f"{h}q{a} I think no", 0, NAMES) == (
        f"{h}q{a}",
        " I think yes",
        " I think no",
    )
    # Multi-turn, diverging in the last assistant turn: earlier turns belong to the prompt.
    chosen, rejected = f"{h}q1{a} a1{h}q2{a} good", f"{h}q1{a} a1{h}q2{a} bad"
    assert split_implicit_text(chosen, rejected, 0, NAMES)[0] == f"{h}q1{a} a1{h}q2{a}"
    # Chosen goes on for more turns: the split is at the last *shared* marker.
    chosen, rejected = f"{h}q{a} sure{h}thanks{a} welcome", f"{h}q{a} no"
    assert split_implicit_text(chosen, rejected, 0, NAMES) == (f"{h}q{a}", f" sure{h}thanks{a} welcome", " no")


def test_hh_split_errors():
    with pytest.raises(PreferenceDataError, match=r"^row 3, field 'chosen': expected .* share a prompt ending in"):
        split_implicit_text("plain text one", "plain text two", 3, NAMES)
    with pytest.raises(PreferenceDataError, match=r"^row 1, field 'rejected': expected a non-empty response"):
        split_implicit_text("\n\nHuman: q\n\nAssistant: yes", "\n\nHuman: q\n\nAssistant:  ", 1, NAMES)


def test_message_implicit_prompt_is_common_prefix(fixtures_dir: Path):
    row = _rows(fixtures_dir / "hh_messages.jsonl")[1]
    prompt, chosen, rejected = split_implicit_messages(row["chosen"], row["rejected"], 0, NAMES)
    assert prompt == row["chosen"][:3]
    assert chosen == row["chosen"][3:]
    assert rejected == row["rejected"][3:]


def test_message_implicit_prompt_errors():
    with pytest.raises(PreferenceDataError, match=r"^row 5, field 'chosen': .*first messages differ"):
        split_implicit_messages([user("a"), assistant("b")], [user("c"), assistant("b")], 5, NAMES)
    with pytest.raises(PreferenceDataError, match=r"^row 0, field 'chosen': .*'assistant'.*got role 'user'"):
        split_implicit_messages([user("a"), user("b")], [user("a"), assistant("c")], 0, NAMES)
    with pytest.raises(PreferenceDataError, match=r"^row 0, field 'rejected': expected at least one assistant"):
        split_implicit_messages([user("a"), assistant("b")], [user("a")], 0, NAMES)


# --- rendering ----------------------------------------------------------------------------------------------------


def _renderer(tokenizer, columns: dict[str, list], chat_template: object = "auto") -> PairRenderer:
    return PairRenderer(tokenizer, resolve_format(columns, NAMES), NAMES, chat_template)  # type: ignore[arg-type]


def test_ultrafeedback_rows_render_prompt_with_generation_prompt(bpe_tokenizer, fixtures_dir: Path):
    rows = _rows(fixtures_dir / "ultrafeedback.jsonl")
    renderer = _renderer(bpe_tokenizer, _columns(rows))
    for index, row in enumerate(rows):
        pair = renderer.render(row, index)
        expected_prompt = f"<s><|im_start|>user\n{row['prompt']}<|im_end|>\n<|im_start|>assistant\n"
        assert pair.prompt == expected_prompt
        assert pair.chosen == row["chosen"][1]["content"] + "<|im_end|>\n"
        assert pair.rejected == row["rejected"][1]["content"] + "<|im_end|>\n"


def test_response_may_be_full_conversation_or_assistant_turn_only(bpe_tokenizer):
    full = {"prompt": "q", "chosen": [user("q"), assistant("yes")], "rejected": [user("q"), assistant("no")]}
    only = {"prompt": "q", "chosen": [assistant("yes")], "rejected": [assistant("no")]}
    as_messages_prompt = {"prompt": [user("q")], "chosen": [assistant("yes")], "rejected": [user("q"), assistant("no")]}
    renderer = _renderer(bpe_tokenizer, _columns([full]))
    rendered = {renderer.render(row, 0) for row in (full, only, as_messages_prompt)}
    assert len(rendered) == 1


def test_conversational_response_must_start_with_assistant(bpe_tokenizer):
    row = {"prompt": "q", "chosen": [user("other question"), assistant("a")], "rejected": [assistant("b")]}
    renderer = _renderer(bpe_tokenizer, _columns([row]))
    with pytest.raises(PreferenceDataError, match=r"^row 9, field 'chosen': .*'assistant'.*got role 'user'"):
        renderer.render(row, 9)


def test_identical_responses_are_bad_rows(bpe_tokenizer):
    row = {"prompt": "q", "chosen": [user("q"), assistant("same")], "rejected": [assistant("same")]}
    with pytest.raises(PreferenceDataError, match=r"^row 2, field 'rejected': expected 'rejected' to differ") as info:
        _renderer(bpe_tokenizer, _columns([row])).render(row, 2)
    assert info.value.reason == "identical_pair"


def test_implicit_messages_render_through_template(bpe_tokenizer, fixtures_dir: Path):
    rows = _rows(fixtures_dir / "hh_messages.jsonl")
    pair = _renderer(bpe_tokenizer, _columns(rows)).render(rows[0], 0)
    assert pair.prompt.startswith("<s><|im_start|>system\nYou are a careful assistant.<|im_end|>\n")
    assert pair.prompt.endswith("<|im_start|>user\nIs it safe to eat raw chicken?<|im_end|>\n<|im_start|>assistant\n")
    assert pair.rejected == "Yes, it is fine.<|im_end|>\n"


def test_template_whose_prompt_is_not_a_prefix_is_an_error(bpe_tokenizer):
    # The generation prompt says "ASSISTANT:" but assistant turns are written "Assistant:".
    bpe_tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    row = {"prompt": "q", "chosen": [assistant("a")], "rejected": [assistant("b")]}
    with pytest.raises(PreferenceDataError, match=r"^row 4, field 'chosen': .*not a prefix") as info:
        _renderer(bpe_tokenizer, _columns([row])).render(row, 4)
    assert info.value.reason == "template_mismatch"


def test_template_exception_names_the_row(synthetic_tokenizer):
    row = {"prompt": [{"role": "tool", "content": "q"}], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    with pytest.raises(PreferenceDataError, match=r"^row 1, field 'prompt': the chat template .* failed"):
        _renderer(synthetic_tokenizer, _columns([row])).render(row, 1)


def test_missing_chat_template_names_the_tokenizer(bpe_tokenizer):
    bpe_tokenizer.chat_template = None
    columns = {"prompt": ["q"], "chosen": [[assistant("a")]], "rejected": [[assistant("b")]]}
    with pytest.raises(PreferenceDataError, match=rf"tokenizer '{bpe_tokenizer.name_or_path}' has no chat template"):
        _renderer(bpe_tokenizer, columns)


def test_chat_template_option(bpe_tokenizer):
    messages = {"prompt": ["q"], "chosen": [[assistant("a")]], "rejected": [[assistant("b")]]}
    with pytest.raises(PreferenceDataError, match="message lists, which need a chat template"):
        _renderer(bpe_tokenizer, messages, chat_template=False)
    text = {"prompt": ["q"], "chosen": ["a"], "rejected": ["b"]}
    assert _renderer(bpe_tokenizer, text).render({"prompt": "q", "chosen": "a", "rejected": "b"}, 0) == RenderedPair(
        "q", "a", "b"
    )
    wrapped = _renderer(bpe_tokenizer, text, chat_template=True).render(
        {"prompt": "q", "chosen": "a", "rejected": "b"}, 0
    )
    assert wrapped == RenderedPair(
        "<s><|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n", "a<|im_end|>\n", "b<|im_end|>\n"
    )
    implicit = {"chosen": ["\n\nHuman: q\n\nAssistant: a"], "rejected": ["\n\nHuman: q\n\nAssistant: b"]}
    with pytest.raises(PreferenceDataError, match="cannot be used with implicit-prompt string rows"):
        _renderer(bpe_tokenizer, implicit, chat_template=True)
