"""The synthetic preference dataset: gold reward, labelling, determinism and its tokenizer."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from betadpo_lightning.data.synthetic import (
    SYNTHETIC_VOCAB_SIZE,
    WORD_SCORES,
    SyntheticConfig,
    build_synthetic_tokenizer,
    generate_split,
    gold_reward,
    synthetic_dir,
    write_synthetic_dataset,
)
from betadpo_lightning.data.synthetic.vocab import BAD_WORDS, GOOD_WORDS, WORDS


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- gold reward --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0.0),
        ("the river and the city", 0.0),
        ("excellent", 3.0),
        ("excellent wrong", 0.0),
        ("helpful helpful vague", 2.5 + 2.5 - 1.5),
        ("a clear and correct answer", 1.5 + 2.0),
        ("rude lazy messy useless", -2.5 - 1.0 - 1.0 - 2.0),
        ("kind precise </s> <|assistant|> unknownword", 1.0 + 1.0),
        ("  clear\n\tclear  ", 3.0),
    ],
)
def test_gold_reward_by_hand(text: str, expected: float):
    assert gold_reward(text) == pytest.approx(expected)


def test_word_scores_as_documented():
    assert {w: s for w, s in WORD_SCORES.items() if s > 0} == dict(GOOD_WORDS)
    assert {w: s for w, s in WORD_SCORES.items() if s < 0} == dict(BAD_WORDS)
    assert len(GOOD_WORDS) == len(BAD_WORDS) == 6
    assert sorted(GOOD_WORDS.values()) == [1.0, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert sorted(BAD_WORDS.values()) == [-3.0, -2.5, -2.0, -1.5, -1.0, -1.0]
    assert set(WORD_SCORES) == set(WORDS)


# --- labelling ----------------------------------------------------------------------------------------------------


def test_rows_record_their_gold_rewards():
    for row in generate_split(SyntheticConfig(train_size=200), "train"):
        assert row["chosen_reward"] == gold_reward(row["chosen"])
        assert row["rejected_reward"] == gold_reward(row["rejected"])
        assert row["chosen"] != row["rejected"]
        assert set(row["prompt"].split()) <= set(WORDS)


def test_label_noise_flips_exactly_that_fraction():
    # A near-zero temperature makes the Bradley-Terry draw follow the gold reward on easy pairs,
    # so every flipped pair, and only those, prefers the response with the lower gold reward.
    config = SyntheticConfig(train_size=500, hard_fraction=0.0, temperature=0.01, label_noise=0.2, seed=5)
    rows = generate_split(config, "train")
    flipped = [row["flipped"] for row in rows]
    against_gold = [row["chosen_reward"] < row["rejected_reward"] for row in rows]
    assert sum(flipped) == 100
    assert flipped == against_gold


def test_easy_and_hard_mix():
    config = SyntheticConfig(train_size=400, hard_fraction=0.3, easy_min_gap=4.0, hard_max_gap=1.0, seed=1)
    rows = generate_split(config, "train")
    gaps = {"easy": [], "hard": []}
    for row in rows:
        gaps[row["difficulty"]].append(abs(row["chosen_reward"] - row["rejected_reward"]))
    assert len(gaps["hard"]) == 120
    assert min(gaps["easy"]) >= 4.0
    assert min(gaps["hard"]) > 0.0
    assert max(gaps["hard"]) <= 1.0


def test_bradley_terry_draw_matches_its_probabilities():
    config = SyntheticConfig(train_size=3000, hard_fraction=1.0, hard_max_gap=1.5, seed=2)
    rows = generate_split(config, "train")
    expected = sum(_sigmoid(abs(row["chosen_reward"] - row["rejected_reward"])) for row in rows) / len(rows)
    observed = sum(row["chosen_reward"] > row["rejected_reward"] for row in rows) / len(rows)
    assert 0.55 < expected < 0.85
    assert observed == pytest.approx(expected, abs=0.03)  # about 3.5 standard errors


def test_config_validation():
    with pytest.raises(ValueError, match="0 <= label_noise <= 1"):
        SyntheticConfig(label_noise=1.5)
    with pytest.raises(ValueError, match="hard_max_gap < easy_min_gap"):
        SyntheticConfig(hard_max_gap=3.0, easy_min_gap=2.0)
    with pytest.raises(ValueError, match="min_response_words <= max_response_words"):
        SyntheticConfig(min_response_words=5, max_response_words=4)


# --- files --------------------------------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_files_are_deterministic_for_a_seed(tmp_path: Path):
    config = SyntheticConfig(train_size=64, validation_size=16, label_noise=0.1, seed=11)
    first = write_synthetic_dataset(config, tmp_path / "a")
    second = write_synthetic_dataset(config, tmp_path / "b")
    assert first.name == second.name == f"synthetic-{config.digest()}"
    assert set(_files(first)) >= {"train.jsonl", "validation.jsonl", "tokenizer/tokenizer.json"}
    assert _files(first) == _files(second)
    other = write_synthetic_dataset(
        SyntheticConfig(train_size=64, validation_size=16, label_noise=0.1, seed=12), tmp_path
    )
    assert (other / "train.jsonl").read_bytes() != (first / "train.jsonl").read_bytes()
    assert (other / "tokenizer" / "tokenizer.json").read_bytes() == (
        first / "tokenizer" / "tokenizer.json"
    ).read_bytes()


@pytest.mark.slow
def test_files_are_identical_across_processes(tmp_path: Path):
    config = SyntheticConfig(train_size=64, validation_size=16, label_noise=0.1, seed=11)
    here = write_synthetic_dataset(config, tmp_path / "here")
    script = (
        "import sys; from betadpo_lightning.data.synthetic import SyntheticConfig, write_synthetic_dataset; "
        f"write_synthetic_dataset(SyntheticConfig(**{config.__dict__!r}), sys.argv[1])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "there")], check=True, env=env, timeout=120)
    assert _files(here) == _files(tmp_path / "there" / here.name)


def test_written_rows_and_existing_folder_reuse(tmp_path: Path):
    config = SyntheticConfig(train_size=20, validation_size=5)
    folder = write_synthetic_dataset(config, tmp_path)
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == generate_split(config, "train")
    assert len((folder / "validation.jsonl").read_text(encoding="utf-8").splitlines()) == 5
    marker = folder / "train.jsonl"
    stamp = marker.stat().st_mtime_ns
    assert write_synthetic_dataset(config, tmp_path) == folder == synthetic_dir(config, tmp_path)
    assert marker.stat().st_mtime_ns == stamp  # an existing dataset is not written again
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging folder left


# --- tokenizer ----------------------------------------------------------------------------------------------------


def test_tokenizer_vocabulary_and_special_tokens(synthetic_tokenizer):
    assert len(synthetic_tokenizer) == SYNTHETIC_VOCAB_SIZE == 64
    assert (synthetic_tokenizer.pad_token_id, synthetic_tokenizer.unk_token_id) == (0, 1)
    assert (synthetic_tokenizer.bos_token_id, synthetic_tokenizer.eos_token_id) == (2, 3)
    ids = synthetic_tokenizer(" ".join(WORDS), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(WORDS)
    assert len(set(ids)) == len(WORDS)
    assert synthetic_tokenizer.unk_token_id not in ids
    assert max(ids) == SYNTHETIC_VOCAB_SIZE - 1


def test_saved_tokenizer_loads_offline_and_matches(tmp_path: Path):
    from transformers import AutoTokenizer

    folder = write_synthetic_dataset(SyntheticConfig(train_size=4, validation_size=0), tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    built = build_synthetic_tokenizer()
    text = "why the bridge </s> clear answer"
    assert loaded(text)["input_ids"] == built(text)["input_ids"]
    assert loaded.chat_template == built.chat_template
    assert len(loaded) == SYNTHETIC_VOCAB_SIZE


def test_every_generated_row_tokenizes_without_unknown_tokens(synthetic_tokenizer):
    for row in generate_split(SyntheticConfig(train_size=100, format="conversational"), "train"):
        text = synthetic_tokenizer.apply_chat_template(row["chosen"], tokenize=False)
        assert synthetic_tokenizer.unk_token_id not in synthetic_tokenizer(text)["input_ids"]


# --- learnability -------------------------------------------------------------------------------------------------


def _sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1)


@pytest.mark.slow
def test_gold_reward_is_learnable_by_a_tiny_llama_with_dpo(tmp_path: Path):
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    from betadpo_lightning.data import PreferenceDataModule

    data = PreferenceDataModule(
        cache_dir=str(tmp_path), synthetic=SyntheticConfig(train_size=1024), batch_size=32, max_length=64
    )
    data.prepare_data()
    data.setup("fit")
    config = LlamaConfig(vocab_size=SYNTHETIC_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3)  # fmt: skip
    policy = LlamaForCausalLM(config)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)

    def accuracy() -> float:
        correct = total = 0
        with torch.no_grad():
            for batch in data.val_dataloader():
                margin = _sequence_logps(policy, batch) - _sequence_logps(reference, batch)
                pairs = margin.shape[0] // 2
                correct += int((margin[:pairs] > margin[pairs:]).sum())
                total += pairs
        return correct / total

    before = accuracy()
    loader = iter(data.train_dataloader())
    for _ in range(100):
        batch = next(loader, None) or next(loader := iter(data.train_dataloader()))
        margin = _sequence_logps(policy, batch) - _sequence_logps(reference, batch)
        pairs = margin.shape[0] // 2
        loss = -torch.nn.functional.logsigmoid(0.1 * (margin[:pairs] - margin[pairs:])).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = accuracy()
    assert before == 0.0  # policy == reference: every margin ties at 0, which counts as wrong
    assert after > 0.75
