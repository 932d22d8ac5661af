"""Reasoning-model chat templates (DeepSeek-R1-Distill, Qwen3) end to end: exact prompt and response token ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from betadpo_lightning.data import PreferenceDataError, PreferenceDataModule
from betadpo_lightning.data.boundary import check_reasoning_kept, response_after_prompt
from helpers.chat_templates import DEEPSEEK_R1_DISTILL, QWEN3

pytestmark = [pytest.mark.filterwarnings("ignore:dataset .* has no split 'validation':UserWarning")]

DEEPSEEK_BOS, DEEPSEEK_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
DEEPSEEK_SPECIAL = [DEEPSEEK_BOS, DEEPSEEK_EOS, "<｜User｜>", "<｜Assistant｜>"]
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK = ["<think>", "</think>"]  # added, not special, as in both models' tokenizers

QUESTION = "What is two plus two?"


def build_tokenizer(special: list[str], template: str, bos: str | None, eos: str, pad: str | None = None):
    """A byte-level BPE tokenizer with the model's special tokens and ``<think>``/``</think>`` as added tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [QUESTION, "Four. It is four. Five. add them up, two and two make four", "What is the capital?"] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    backend.add_tokens([AddedToken(token, special=False, normalized=False) for token in THINK])
    if bos is not None:  # DeepSeek's tokenizer writes BOS in front of every sequence
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad)
    tokenizer.chat_template = template
    return tokenizer


def ids(tokenizer, *pieces: str) -> list[int]:
    """Expected ids, written piece by piece: a special or added token is one id, other text its BPE ids."""
    vocabulary = tokenizer.get_vocab()
    out: list[int] = []
    for piece in pieces:
        if piece in DEEPSEEK_SPECIAL + QWEN_SPECIAL + THINK:
            out.append(vocabulary[piece])
        else:
            out.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return out


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def _ready(tmp_path: Path, tokenizer, rows: list[dict], **kwargs) -> PreferenceDataModule:
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(str(tokenizer_dir))
    module = PreferenceDataModule(
        dataset=str(_write(tmp_path / "pairs.jsonl", rows)),
        tokenizer=str(tokenizer_dir),
        cache_dir=str(tmp_path / "cache"),
        batch_size=len(rows),
        **kwargs,
    )
    module.prepare_data()
    module.setup("fit")
    return module


def _pair(module: PreferenceDataModule, position: int = 0) -> tuple[list[int], list[int], list[int]]:
    row = module.splits["train"][position]
    return row["prompt_input_ids"], row["chosen_input_ids"], row["rejected_input_ids"]


def _check_batch(module: PreferenceDataModule, prompt: list[int], chosen: list[int], rejected: list[int]) -> None:
    """The collated rows are prompt + response, with labels on the response only (all pairs of the data alike)."""
    batch = next(iter(module.train_dataloader()))
    pairs = len(batch["pair_index"])
    for row, response in ((0, chosen), (pairs, rejected)):  # chosen rows first, then rejected
        length = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :length].tolist() == prompt + response
        assert batch["labels"][row, : len(prompt)].tolist() == [-100] * len(prompt)
        assert batch["labels"][row, len(prompt) : length].tolist() == response


def _row(chosen: str, rejected: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": QUESTION}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


# --- DeepSeek-R1-Distill ----------------------------------------------------------------------------------------------


@pytest.fixture
def deepseek():
    return build_tokenizer(DEEPSEEK_SPECIAL, DEEPSEEK_R1_DISTILL, bos=DEEPSEEK_BOS, eos=DEEPSEEK_EOS, pad=DEEPSEEK_EOS)


def test_deepseek_prompt_keeps_the_opened_think_block(deepseek, tmp_path: Path):
    module = _ready(tmp_path, deepseek, [_row("Four.", "Five.")] * 3)
    stats = module.stats["train"]
    assert (stats.rows, stats.kept, stats.skipped) == (3, 3, {})
    prompt, chosen, rejected = _pair(module)
    # BOS once (written by the template), the question, then the generation prompt with the opened block.
    assert prompt == ids(deepseek, DEEPSEEK_BOS, "<｜User｜>", QUESTION, "<｜Assistant｜>", "<think>", "\n")
    assert deepseek.decode(prompt) == f"{DEEPSEEK_BOS}<｜User｜>{QUESTION}<｜Assistant｜><think>\n"
    assert deepseek.convert_ids_to_tokens(prompt[-3:]) == ["<｜Assistant｜>", "<think>", "Ċ"]  # Ċ: byte-level "\n"
    # The response is the answer after the opened block, ended by the template's EOS (none appended on top).
    assert chosen == ids(deepseek, "Four.", DEEPSEEK_EOS)
    assert rejected == ids(deepseek, "Five.", DEEPSEEK_EOS)
    assert chosen.count(deepseek.eos_token_id) == 1
    _check_batch(module, prompt, chosen, rejected)


def test_deepseek_reasoning_that_the_template_drops_is_refused(deepseek, tmp_path: Path):
    reasoned = _row("<think>\nadd them up\n</think>\n\nFour.", "Five.")
    with pytest.raises(PreferenceDataError, match=r"line 1, field 'chosen': .*leaves out") as info:
        _ready(tmp_path, deepseek, [reasoned])
    assert info.value.reason == "reasoning_dropped"


def test_deepseek_with_a_template_that_keeps_reasoning(deepseek, tmp_path: Path):
    # The same template without the '</think>' split: the response carries the reasoning after the opened block,
    # whether the data writes the opening <think> itself or starts inside the block (as sampled after the prompt).
    deepseek.chat_template = DEEPSEEK_R1_DISTILL.replace(
        "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}", ""
    )
    rows = [_row("<think>\nadd them up\n</think>\n\nFour.", "Five."), _row("add them up\n</think>\n\nFour.", "Five.")]
    module = _ready(tmp_path, deepseek, rows)
    expected = ids(deepseek, "add them up\n", "</think>", "\n\nFour.", DEEPSEEK_EOS)
    for position in (0, 1):
        prompt, chosen, rejected = _pair(module, position)
        assert deepseek.decode(prompt).endswith("<｜Assistant｜><think>\n")
        assert chosen == expected
        assert rejected == ids(deepseek, "Five.", DEEPSEEK_EOS)


# --- Qwen3 ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def qwen3():
    return build_tokenizer(QWEN_SPECIAL, QWEN3, bos=None, eos="<|im_end|>", pad="<|endoftext|>")


QWEN_PROMPT = ["<|im_start|>", f"user\n{QUESTION}", "<|im_end|>", "\n", "<|im_start|>", "assistant\n"]
EMPTY_THINK = ["<think>", "\n\n", "</think>", "\n\n"]


def test_qwen3_default_keeps_the_empty_think_block_in_every_response(qwen3, tmp_path: Path):
    module = _ready(tmp_path, qwen3, [_row("Four.", "Five.")] * 2)
    prompt, chosen, rejected = _pair(module)
    assert prompt == ids(qwen3, *QWEN_PROMPT)  # no BOS: the tokenizer has none
    assert chosen == ids(qwen3, *EMPTY_THINK, "Four.", "<|im_end|>", "\n")  # EOS written by the template
    assert rejected == ids(qwen3, *EMPTY_THINK, "Five.", "<|im_end|>", "\n")
    assert qwen3.convert_ids_to_tokens(chosen[:6]) == ["<think>", "Ċ", "Ċ", "</think>", "Ċ", "Ċ"]  # no "\n\n" merge
    _check_batch(module, prompt, chosen, rejected)


def test_qwen3_enable_thinking_false_moves_the_empty_block_to_the_prompt(qwen3, tmp_path: Path):
    module = _ready(tmp_path, qwen3, [_row("Four.", "Five.")] * 2, chat_template_kwargs={"enable_thinking": False})
    prompt, chosen, rejected = _pair(module)
    assert prompt == ids(qwen3, *QWEN_PROMPT, *EMPTY_THINK)
    assert chosen == ids(qwen3, "Four.", "<|im_end|>", "\n")
    assert rejected == ids(qwen3, "Five.", "<|im_end|>", "\n")
    assert qwen3.convert_ids_to_tokens(prompt[-6:]) == ["<think>", "Ċ", "Ċ", "</think>", "Ċ", "Ċ"]
    _check_batch(module, prompt, chosen, rejected)


def test_qwen3_reasoning_responses(qwen3, tmp_path: Path):
    row = _row("<think>\nadd them up\n</think>\n\nFour.", "Five.")
    module = _ready(tmp_path / "thinking", qwen3, [row])
    prompt, chosen, rejected = _pair(module)
    assert prompt == ids(qwen3, *QWEN_PROMPT)
    assert chosen == ids(qwen3, "<think>", "\nadd them up\n", "</think>", "\n\nFour.", "<|im_end|>", "\n")
    assert rejected == ids(qwen3, *EMPTY_THINK, "Five.", "<|im_end|>", "\n")
    # Reasoning in the data while the generation prompt closes the block already: no consistent pair.
    with pytest.raises(PreferenceDataError, match=r"line 1, field 'chosen': .*opens a block of its own") as info:
        _ready(tmp_path / "no-thinking", qwen3, [row], chat_template_kwargs={"enable_thinking": False})
    assert info.value.reason == "template_mismatch"


def test_chat_template_kwargs_from_the_command_line():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(PreferenceDataModule, "data")
    config = parser.parse_args(["--data.chat_template_kwargs", '{"enable_thinking": false}'])
    assert config.data.chat_template_kwargs == {"enable_thinking": False}


def test_chat_template_kwargs_cannot_set_renderer_arguments():
    with pytest.raises(ValueError, match="chat_template_kwargs cannot set 'add_generation_prompt'"):
        PreferenceDataModule(dataset="pairs.jsonl", tokenizer="t", chat_template_kwargs={"add_generation_prompt": True})


# --- the boundary rule by hand ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "conversation", "response"),
    [
        ("<U>q<A>", "<U>q<A>a<E>", "a<E>"),  # the usual case: the prompt is a prefix
        ("<U>q<A><think>\n", "<U>q<A>a<E>", "a<E>"),  # the template drops the opened block from the turn
        ("<U>q<A><think>\n", "<U>q<A><think>\nr</think>a<E>", "r</think>a<E>"),  # the turn opens it too
        ("<U>q<A><think>\n\n</think>\n\n", "<U>q<A>a<E>", "a<E>"),  # an empty block in the prompt only
    ],
)
def test_response_after_prompt(prompt: str, conversation: str, response: str):
    assert response_after_prompt(prompt, conversation, 0, "chosen") == response


@pytest.mark.parametrize(
    ("prompt", "conversation", "message"),
    [
        ("<U>q<A><think>\n\n</think>\n\n", "<U>q<A><think>\nr</think>a<E>", "opens a block of its own"),
        ("<U>q<A>", "<U>q<B>a<E>", "not a prefix"),  # another role marker
        ("<U>q<A><tool>", "<U>q<A>a<E>", "not a prefix"),  # an unknown opening is not guessed at
    ],
)
def test_response_after_prompt_refuses(prompt: str, conversation: str, message: str):
    with pytest.raises(PreferenceDataError, match=message) as info:
        response_after_prompt(prompt, conversation, 3, "rejected")
    assert (info.value.row, info.value.field, info.value.reason) == (3, "rejected", "template_mismatch")


def test_reasoning_kept_check():
    messages = [{"role": "assistant", "content": "<think>\nr</think>a"}]
    check_reasoning_kept(messages, "r</think>a<E>", 0, "chosen")
    check_reasoning_kept([{"role": "assistant", "content": "a"}], "a<E>", 0, "chosen")
    check_reasoning_kept([{"role": "assistant", "content": "<think>\n\n</think>a"}], "a<E>", 0, "chosen")  # empty
    with pytest.raises(PreferenceDataError, match=r"holds reasoning \('r'\.\.\.\), which the chat template leaves out"):
        check_reasoning_kept(messages, "a<E>", 0, "chosen")
    with_field = [{"role": "assistant", "content": "a", "reasoning_content": "add up"}]
    check_reasoning_kept(with_field, "<think>add up</think>a<E>", 0, "chosen")
    with pytest.raises(PreferenceDataError) as info:
        check_reasoning_kept(with_field, "a<E>", 0, "chosen")
    assert info.value.reason == "reasoning_dropped"
    # Only the last assistant turn counts: earlier turns are history, whose reasoning templates may drop.
    turns = [messages[0], {"role": "user", "content": "and?"}, {"role": "assistant", "content": "b"}]
    check_reasoning_kept(turns, "a<E>and?b<E>", 0, "chosen")
