"""Shared test settings: everything offline, deterministic, on CPU."""

from __future__ import annotations

import os

# Never reach a hub from the tests: a missing model must fail at once, not retry for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


# --- Preference data fixtures ---------------------------------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"

CHATML_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _bpe_corpus() -> list[str]:
    texts = ["hello world, the world is wide", "say hello world again and again", "worldwide worlds of wonder"] * 20
    for path in sorted(FIXTURES.glob("*.jsonl")):
        texts.extend(line for line in path.read_text(encoding="utf-8").splitlines())
    return texts


def build_bpe_tokenizer(chat_template: str | None = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer trained offline on the fixtures: BOS ``<s>``, EOS ``<|im_end|>``, no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<s>", "<|im_end|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_bpe_corpus(), trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="<|im_end|>", extra_special_tokens=["<|im_start|>"]
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bpe-tokenizer")
    build_bpe_tokenizer().save_pretrained(str(path))
    return path


@pytest.fixture
def bpe_tokenizer(bpe_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bpe_tokenizer_dir))


@pytest.fixture
def synthetic_tokenizer():
    from betadpo_lightning.data.synthetic import build_synthetic_tokenizer

    return build_synthetic_tokenizer()


def save_tiny_model(path: Path, tokenizer_dir: Path | None = None, seed: int = 0, **overrides) -> Path:
    """A tiny Llama (random init from ``seed``) saved with ``save_pretrained``, with the BPE tokenizer beside it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from helpers.tiny import TINY_LLAMA

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir)) if tokenizer_dir is not None else None
    values = {**TINY_LLAMA, **overrides}
    if tokenizer is not None:
        values.update(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**values))
    model.save_pretrained(str(path))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer_dir: Path) -> Path:
    """A local model directory (tiny Llama + BPE tokenizer), loaded by path like a hub checkpoint."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), bpe_tokenizer_dir, seed=0)
