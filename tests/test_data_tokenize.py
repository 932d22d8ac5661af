"""Exact prompt/response tokenization, special tokens, truncation and bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from betadpo_lightning.data import ColumnNames, PreferenceDataError, collate_preference_pairs
from betadpo_lightning.data.formats import resolve_format
from betadpo_lightning.data.render import PairRenderer
from betadpo_lightning.data.tokenize import PairTokenizer, special_prefix
from betadpo_lightning.data.truncation import TruncationLimits, truncate_left, truncate_pair

NAMES = ColumnNames()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tokenize_rows(tokenizer, rows: list[dict], limits: TruncationLimits | None = None, **options) -> dict[str, list]:
    """Run rows through the same map function the data module uses; row indices start at 10."""
    columns = {key: [row.get(key) for row in rows] for key in rows[0]}
    chat_template = options.pop("chat_template", "auto")
    renderer = PairRenderer(tokenizer, resolve_format(columns, NAMES), NAMES, chat_template)
    function = PairTokenizer(tokenizer, renderer, limits or TruncationLimits(), **options)
    return function(columns, list(range(10, 10 + len(rows))))


def _token(tokenizer, text: str) -> int:
    return tokenizer.convert_tokens_to_ids(text)


# --- boundary -----------------------------------------------------------------------------------------------------


def test_boundary_merges_do_not_leak_across_prompt_and_response(bpe_tokenizer, fixtures_dir: Path):
    rows = _rows(fixtures_dir / "standard.jsonl")
    out = tokenize_rows(bpe_tokenizer, rows)
    merged = 0
    for position, row in enumerate(rows):
        prompt_ids = out["prompt_input_ids"][position]
        assert prompt_ids == bpe_tokenizer(row["prompt"])["input_ids"]  # the prompt alone, tokenized as usual
        for key in ("chosen", "rejected"):
            response_ids = out[f"{key}_input_ids"][position]
            naive = bpe_tokenizer(row["prompt"] + row[key])["input_ids"] + [bpe_tokenizer.eos_token_id]
            ours = prompt_ids + response_ids
            assert bpe_tokenizer.decode(ours) == bpe_tokenizer.decode(naive)  # same text either way
            if naive != ours:
                merged += 1
                assert naive[: len(prompt_ids)] != prompt_ids  # naive joint tokenization breaks the prefix
    assert merged >= 2  # "Say hello " + "world" and "hello wor" + "ld" merge when tokenized jointly


def test_bpe_merge_example_by_hand(bpe_tokenizer):
    out = tokenize_rows(bpe_tokenizer, [{"prompt": "Say hello ", "chosen": "world", "rejected": "there"}])
    prompt = bpe_tokenizer.convert_ids_to_tokens(out["prompt_input_ids"][0])
    chosen = bpe_tokenizer.convert_ids_to_tokens(out["chosen_input_ids"][0])
    assert prompt[-1] == "Ġ"
    assert chosen[0] == "world"
    assert "Ġworld" in bpe_tokenizer.convert_ids_to_tokens(bpe_tokenizer("Say hello world")["input_ids"])


# --- special tokens -----------------------------------------------------------------------------------------------


def test_special_prefix(bpe_tokenizer, synthetic_tokenizer):
    assert special_prefix(bpe_tokenizer) == [bpe_tokenizer.bos_token_id]
    assert special_prefix(synthetic_tokenizer) == [synthetic_tokenizer.bos_token_id]
    bpe_tokenizer.backend_tokenizer.post_processor = None
    assert special_prefix(bpe_tokenizer) == []


def test_exactly_one_bos_when_template_writes_bos_itself(bpe_tokenizer, fixtures_dir: Path):
    assert "bos_token" in bpe_tokenizer.chat_template
    out = tokenize_rows(bpe_tokenizer, _rows(fixtures_dir / "ultrafeedback.jsonl"))
    bos = bpe_tokenizer.bos_token_id
    for prompt, chosen, rejected in zip(
        out["prompt_input_ids"], out["chosen_input_ids"], out["rejected_input_ids"], strict=True
    ):
        assert prompt[0] == bos
        assert (prompt + chosen).count(bos) == 1
        assert (prompt + rejected).count(bos) == 1


def test_eos_appended_to_plain_responses_once(bpe_tokenizer):
    eos = bpe_tokenizer.eos_token_id
    rows = [
        {"prompt": "Capital of France?", "chosen": " Paris.", "rejected": " Lyon."},
        {"prompt": "Capital of Spain?", "chosen": " Madrid.<|im_end|>", "rejected": " Rome.<|im_end|>  "},
    ]
    out = tokenize_rows(bpe_tokenizer, rows)
    for key in ("chosen_input_ids", "rejected_input_ids"):
        for ids in out[key]:
            assert ids.count(eos) == 1
    assert out["chosen_input_ids"][0][-1] == eos
    assert out["chosen_input_ids"][1][-1] == eos


def test_chat_template_end_of_turn_eos_is_not_doubled(bpe_tokenizer, fixtures_dir: Path):
    eos, newline = bpe_tokenizer.eos_token_id, bpe_tokenizer("\n", add_special_tokens=False)["input_ids"]
    out = tokenize_rows(bpe_tokenizer, _rows(fixtures_dir / "ultrafeedback.jsonl"))
    for ids in out["chosen_input_ids"] + out["rejected_input_ids"]:
        assert ids.count(eos) == 1
        assert ids[-1 - len(newline) :] == [eos, *newline]  # "...<|im_end|>\n" as the template writes it


def test_synthetic_conversational_response_ends_with_eos(synthetic_tokenizer):
    row = {"prompt": "what the river", "chosen": [{"role": "assistant", "content": "clear answer"}],
           "rejected": [{"role": "assistant", "content": "vague answer"}]}  # fmt: skip
    out = tokenize_rows(synthetic_tokenizer, [row])
    eos = synthetic_tokenizer.eos_token_id
    assert out["chosen_input_ids"][0] == [
        _token(synthetic_tokenizer, "clear"),
        _token(synthetic_tokenizer, "answer"),
        eos,
    ]
    assert out["prompt_input_ids"][0][-1] == _token(synthetic_tokenizer, "<|assistant|>")


def test_bos_inside_text_is_a_bad_row(bpe_tokenizer):
    rows = [
        {"prompt": "Hi", "chosen": "fine<s>", "rejected": "ok"},
        {"prompt": "x<s>y", "chosen": "a", "rejected": "b"},
    ]
    with pytest.raises(PreferenceDataError, match=r"^row 10, field 'chosen': the response holds the BOS token"):
        tokenize_rows(bpe_tokenizer, rows)
    out = tokenize_rows(bpe_tokenizer, rows, on_bad_row="skip")
    assert out["status"] == ["skipped:unexpected_bos", "skipped:unexpected_bos"]


def test_gpt2_style_tokenizer_with_bos_equal_to_eos(bpe_tokenizer):
    # GPT-2 style: BOS is EOS and nothing is added in front; end-of-turn EOS inside a text is not a stray BOS.
    bpe_tokenizer.backend_tokenizer.post_processor = None
    bpe_tokenizer.bos_token = bpe_tokenizer.eos_token
    eos = bpe_tokenizer.eos_token_id
    rows = [{"prompt": "Hi<|im_end|>\nHow are you?", "chosen": " Fine<|im_end|>\nThanks", "rejected": " Bad"}]
    out = tokenize_rows(bpe_tokenizer, rows)
    assert out["status"] == ["ok"]
    assert out["prompt_input_ids"][0] == bpe_tokenizer(rows[0]["prompt"], add_special_tokens=False)["input_ids"]
    assert out["chosen_input_ids"][0].count(eos) == 2
    assert out["rejected_input_ids"][0][-1] == eos


def test_tokenizer_without_eos_is_rejected(bpe_tokenizer):
    bpe_tokenizer.eos_token = None
    with pytest.raises(PreferenceDataError, match="has no EOS token"):
        tokenize_rows(bpe_tokenizer, [{"prompt": "a", "chosen": "b", "rejected": "c"}])


# --- truncation ---------------------------------------------------------------------------------------------------


def test_truncation_cuts_prompt_left_then_responses_right(bpe_tokenizer, fixtures_dir: Path):
    rows = _rows(fixtures_dir / "over_long.jsonl")
    full = tokenize_rows(bpe_tokenizer, rows)
    limits = TruncationLimits(max_length=64, max_prompt_length=24)
    out = tokenize_rows(bpe_tokenizer, rows, limits)
    bos, eos = bpe_tokenizer.bos_token_id, bpe_tokenizer.eos_token_id
    # Row 0: long prompt and long responses.
    prompt, whole_prompt = out["prompt_input_ids"][0], full["prompt_input_ids"][0]
    assert len(prompt) == 24
    assert prompt[0] == bos
    assert prompt[1:] == whole_prompt[-23:]  # the end of the prompt, next to the response, survives
    for key in ("chosen_input_ids", "rejected_input_ids"):
        assert out[key][0] == full[key][0][: 64 - 24]  # responses keep their beginning
        assert out[key][0][-1] != eos  # a cut response did not end
    assert out["truncation"][0] == "prompt+chosen+rejected"
    # Row 1: short prompt and short rejected response stay whole; EOS kept where nothing was cut.
    assert out["prompt_input_ids"][1] == full["prompt_input_ids"][1]
    assert out["rejected_input_ids"][1] == full["rejected_input_ids"][1]
    assert out["rejected_input_ids"][1][-1] == eos
    assert out["truncation"][1] == "chosen"
    assert all(len(p) + len(r) <= 64 for p, r in zip(out["prompt_input_ids"], out["chosen_input_ids"], strict=True))


def test_prompt_cut_further_to_fit_minimal_response(bpe_tokenizer, fixtures_dir: Path):
    rows = _rows(fixtures_dir / "over_long.jsonl")[:1]
    out = tokenize_rows(bpe_tokenizer, rows, TruncationLimits(max_length=30, min_response_length=8))
    assert len(out["prompt_input_ids"][0]) == 22
    assert len(out["chosen_input_ids"][0]) == 8


def test_pairs_identical_after_truncation_are_dropped(synthetic_tokenizer):
    rows = [{"prompt": "what river", "chosen": "the clear answer", "rejected": "the clear idea"}]
    assert tokenize_rows(synthetic_tokenizer, rows)["status"] == ["ok"]
    out = tokenize_rows(synthetic_tokenizer, rows, TruncationLimits(max_length=5, max_prompt_length=3))
    assert out["status"] == ["dropped:identical_tokens"]
    assert out["chosen_input_ids"] == [[]]


def test_truncate_pair_units():
    limits = TruncationLimits(max_length=6, max_prompt_length=4)
    pair = truncate_pair([1, 5, 6, 7, 8], [9, 10, 11, 2], [12, 2], limits, keep_prefix=1)
    assert pair is not None
    assert (pair.prompt, pair.chosen, pair.rejected, pair.truncated) == (
        [1, 6, 7, 8],
        [9, 10],
        [12, 2],
        ("prompt", "chosen"),
    )
    assert truncate_pair([1, 5], [9], [8], TruncationLimits(), keep_prefix=1).truncated == ()
    # Kept special tokens that leave no room for a response: the pair is dropped.
    assert truncate_pair([1, 3, 5], [9], [8], TruncationLimits(max_length=2), keep_prefix=2) is None
    assert truncate_left([1, 2, 3, 4], 2, keep_prefix=0) == [3, 4]
    assert truncate_left([1, 2, 3, 4], 1, keep_prefix=1) == [1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_length": 1},
        {"max_prompt_length": 0},
        {"min_response_length": 0},
        {"max_length": 4, "min_response_length": 4},
    ],
)
def test_invalid_limits(kwargs: dict):
    with pytest.raises(ValueError, match="must"):
        TruncationLimits(**kwargs)


# --- bad rows -----------------------------------------------------------------------------------------------------


def test_bad_rows_error_names_row_and_field(bpe_tokenizer, fixtures_dir: Path):
    rows = _rows(fixtures_dir / "bad_rows.jsonl")
    with pytest.raises(PreferenceDataError, match=r"^row 11, field 'rejected': expected 'rejected' to differ"):
        tokenize_rows(bpe_tokenizer, rows)


def test_bad_rows_skip_mode_marks_each_kind(bpe_tokenizer, fixtures_dir: Path):
    out = tokenize_rows(bpe_tokenizer, _rows(fixtures_dir / "bad_rows.jsonl"), on_bad_row="skip")
    assert out["status"] == [
        "ok",
        "skipped:identical_pair",
        "skipped:empty_text",
        "skipped:missing_value",
        "skipped:not_text",
        "skipped:empty_text",
        "ok",
    ]
    assert out["index"] == list(range(10, 17))
    assert [bool(ids) for ids in out["chosen_input_ids"]] == [True, False, False, False, False, False, True]


# --- invariants on generated rows ---------------------------------------------------------------------------------

_PIECES = [*"abcdlorw ,.é!?\n", "hello", " world", "<s>", "<|im_end|>", "\n\nAssistant:"]
_text = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=16).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.fixed_dictionaries({"prompt": _text, "chosen": _text, "rejected": _text}), min_size=1, max_size=6),
    max_length=st.integers(min_value=2, max_value=40),
    max_prompt_length=st.one_of(st.none(), st.integers(min_value=1, max_value=30)),
    chat_template=st.booleans(),
)
def test_generated_rows_keep_prefix_and_response_labels(
    bpe_tokenizer, rows, max_length, max_prompt_length, chat_template
):
    limits = TruncationLimits(max_length=max_length, max_prompt_length=max_prompt_length)
    out = tokenize_rows(bpe_tokenizer, rows, limits, on_bad_row="skip", chat_template=chat_template)
    kept = [i for i, status in enumerate(out["status"]) if status == "ok"]
    for i in kept:
        prompt = out["prompt_input_ids"][i]
        assert prompt[0] == bpe_tokenizer.bos_token_id
        for key in ("chosen_input_ids", "rejected_input_ids"):
            row = prompt + out[key][i]
            assert len(row) <= max_length
            assert row[: len(prompt)] == prompt
            assert row.count(bpe_tokenizer.bos_token_id) == 1
    if not kept:
        return
    samples = [{key: out[key][i] for key in out} for i in kept]
    batch = collate_preference_pairs(samples, pad_token_id=0)
    assert ((batch["labels"] != -100).sum(dim=1) >= 1).all()
    for row, i in enumerate(kept):
        length = len(out["prompt_input_ids"][i])
        for offset in (0, len(kept)):
            assert batch["input_ids"][row + offset, :length].tolist() == out["prompt_input_ids"][i]
            assert (batch["labels"][row + offset, :length] == -100).all()
