"""The sample command (`python -m betadpo_lightning.commands.sample`) prints, for each prompt, what `model.generate`
gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from betadpo_lightning.commands.export import main as export
from betadpo_lightning.training.module import PreferenceModule
from helpers.exports import adamw, fit_random_pairs


@pytest.fixture
def exported_chat_model(tmp_path, tiny_model_dir) -> Path:
    """A briefly trained tiny Llama with the BPE tokenizer (ChatML template), exported."""
    module = PreferenceModule(model_name_or_path=str(tiny_model_dir), optimizer=adamw)
    checkpoint = fit_random_pairs(tmp_path / "run", module, steps=1)
    assert export(["--ckpt_path", str(checkpoint), "--output_dir", str(tmp_path / "exported")]) == 0
    return tmp_path / "exported"


def _generated(model, tokenizer, ids: list[int], **options) -> str:
    input_ids = torch.tensor([ids])
    output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=6, **options)
    return tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True)


def test_sample_prints_the_responses_generate_gives(exported_chat_model, tmp_path, capsys):
    from betadpo_lightning.commands.sample import main as sample

    model = AutoModelForCausalLM.from_pretrained(str(exported_chat_model))
    tokenizer = AutoTokenizer.from_pretrained(str(exported_chat_model))
    messages = [{"role": "user", "content": "worldwide worlds of wonder"}]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": messages}) + "\n\n" + json.dumps("the world is wide") + "\n")
    capsys.readouterr()
    common = ["--model", str(exported_chat_model), "--max_new_tokens", "6", "--seed", "0"]
    assert sample([*common, "--prompt", "say hello world", "--prompts_file", str(prompts), "--temperature", "0"]) == 0
    printed = capsys.readouterr().out

    def chat_ids(turns):  # the template writes BOS itself; nothing is added around it
        return list(
            tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )

    shown = ["say hello world", "user: worldwide worlds of wonder", "the world is wide"]
    turns = [[{"role": "user", "content": "say hello world"}], messages, [{"role": "user", "content": shown[2]}]]
    responses = [_generated(model, tokenizer, chat_ids(t), do_sample=False) for t in turns]
    assert any(responses)
    expected = "".join(
        f"=== prompt {i} ===\n{p}\n=== response {i} ===\n{r}\n"
        for i, (p, r) in enumerate(zip(shown, responses, strict=True), 1)
    )
    assert printed == expected

    assert sample([*common, "--prompt", "say hello world", "--chat_template", "false"]) == 0
    plain = _generated(model, tokenizer, tokenizer("say hello world")["input_ids"], do_sample=False)
    assert capsys.readouterr().out == f"=== prompt 1 ===\nsay hello world\n=== response 1 ===\n{plain}\n"

    sampled = [*common[:-1], "7", "--prompt", "say hello world", "--temperature", "1.0"]
    assert sample(sampled) == 0
    first = capsys.readouterr().out
    assert sample(sampled) == 0
    assert capsys.readouterr().out == first  # the seed fixes the sampling
    torch.manual_seed(7)
    drawn = _generated(model, tokenizer, chat_ids(turns[0]), do_sample=True, temperature=1.0)
    assert first == f"=== prompt 1 ===\nsay hello world\n=== response 1 ===\n{drawn}\n"

    assert sample(["--model", str(exported_chat_model)]) == 1
    assert "--prompt" in capsys.readouterr().err
