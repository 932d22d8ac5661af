"""Users' own preference files and the tokenizers and tiny models of the shipped real-data configs, built offline.

The fixtures in ``tests/fixtures/user_files`` are real-shaped rows (written for the tests): Anthropic HH-RLHF
transcripts, UltraFeedback (binarized: message lists; and flat strings), LLaMA-Factory's ShareGPT preference demo
layout (English and Chinese, JSON documents) and its v1 layout (``chosen_messages``/``rejected_messages`` with
``{"type": "text", "value": ...}`` content parts). The tokenizers copy the special-token layout of the real ones:

* :func:`neox_like_tokenizer` (Pythia / GPT-NeoX): byte-level BPE whose ``<|endoftext|>`` (id 0) is its unknown,
  BOS and EOS token at once, no pad token and no chat template;
* :func:`qwen2_like_tokenizer` (Qwen2.5-Instruct): byte-level BPE, no BOS, EOS ``<|im_end|>``, pad
  ``<|endoftext|>``, and a ChatML template that adds a default system turn (:data:`QWEN2_TEMPLATE`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FILES = Path(__file__).parents[1] / "fixtures" / "user_files"

QWEN2_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""Qwen2.5-Instruct's chat template without the tool-call branches."""

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def read_rows(name: str) -> list[dict]:
    """The rows of a fixture (JSON lines, or one JSON document)."""
    text = (FILES / name).read_text(encoding="utf-8")
    return json.loads(text) if name.endswith(".json") else [json.loads(line) for line in text.splitlines()]


def write_rows(path: Path, rows: list[dict], count: int | None = None) -> Path:
    """Write ``rows`` (repeated up to ``count``) in the format of ``path``'s suffix (``.jsonl`` or ``.json``)."""
    rows = [rows[i % len(rows)] for i in range(count)] if count is not None else rows
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def _corpus() -> list[str]:
    texts = []
    for path in sorted(FILES.iterdir()):
        texts.extend(json.dumps(row, ensure_ascii=False) for row in read_rows(path.name))
    return texts * 3


def _byte_level_bpe(special: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def neox_like_tokenizer():
    """A GPT-NeoX-style tokenizer: ``<|endoftext|>`` (id 0) is unk, BOS and EOS; no pad token, no chat template."""
    from transformers import PreTrainedTokenizerFast

    backend = _byte_level_bpe(["<|endoftext|>", "<|padding|>"], 700)
    end = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=end, eos_token=end, unk_token=end)


def qwen2_like_tokenizer(chat_template: str | None = QWEN2_TEMPLATE):
    """A Qwen2.5-Instruct-style tokenizer: no BOS, EOS ``<|im_end|>``, pad ``<|endoftext|>``, a ChatML template."""
    from transformers import PreTrainedTokenizerFast

    backend = _byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 700)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def save_model(path: Path, model_type: str, tokenizer, **overrides) -> Path:
    """A tiny randomly initialised ``model_type`` model saved with its tokenizer (a local model folder)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    values = {**TINY, "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id, **overrides}
    if model_type == "qwen2":
        values.update(num_key_value_heads=2, tie_word_embeddings=True)
    if tokenizer.bos_token_id is not None:
        values["bos_token_id"] = tokenizer.bos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **values))
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
