"""Sample responses from an exported model: a quick look at what a trained policy says.

Usage::

    python -m betadpo_lightning.commands.sample --model exported/ --prompt "explain the clear answer" --max_new_tokens
    32

``--model`` is a directory written by :mod:`~.export` (or any ``transformers`` causal LM with its
tokenizer; a peft adapter directory loads with its base when peft is installed). Prompts come from ``--prompt``
(repeatable) and from ``--prompts_file``, a JSONL file with one prompt per line: a JSON string, or an object whose
``prompt`` is a string or a list of chat messages (``{"role": ..., "content": ...}``). With ``--chat_template auto``
(the default) a prompt is rendered with the tokenizer's chat template when it has one (a string becomes one user
turn, followed by the generation prompt); ``true`` requires a template, ``false`` uses the text as it is. The prompt
starts with the tokenizer's special prefix (e.g. BOS) exactly once, as in training.

Decoding is greedy with ``--temperature 0`` and sampled otherwise; ``--seed`` seeds each prompt's generation, so a
response does not depend on the other prompts. For each prompt it prints ``=== prompt i ===``, the prompt, then
``=== response i ===`` and the generated text (special tokens removed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["encode_prompt", "main", "read_prompts"]

Prompt = str | list[dict[str, str]]
"""A prompt: a text, or a list of chat messages."""


def read_prompts(path: str | Path) -> list[Prompt]:
    """The prompts of a JSONL file: each line a JSON string, or an object with a ``prompt`` string or message list.

    Raises:
        ValueError: naming the file and line of a line that is not one of those.
    """
    prompts: list[Prompt] = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        prompt = value.get("prompt") if isinstance(value, dict) else value
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt))):
            raise ValueError(
                f"{path}, line {number}: expected a JSON string or an object with a 'prompt' string or message list"
            )
        prompts.append(prompt)
    return prompts


def encode_prompt(tokenizer: Any, prompt: Prompt, chat_template: bool) -> list[int]:
    """Token ids of a prompt as the model saw prompts in training.

    Args:
        tokenizer: the model's tokenizer.
        prompt: a text or a list of chat messages.
        chat_template: render with the tokenizer's chat template and its generation prompt.

    Returns:
        The ids, starting with the tokenizer's special prefix (e.g. BOS) exactly once.

    Raises:
        ValueError: for a message list without a chat template.
    """
    from betadpo_lightning.data.tokenize import special_prefix

    if chat_template:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    elif isinstance(prompt, list):
        raise ValueError("a prompt given as chat messages needs a chat template: use --chat_template auto or true")
    else:
        text = prompt
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    prefix = special_prefix(tokenizer)
    return ids if ids[: len(prefix)] == prefix else prefix + ids


def _use_chat_template(tokenizer: Any, option: str, model: str) -> bool:
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if option == "true" and not has_template:
        raise ValueError(f"--chat_template true: the tokenizer of {model} has no chat template; use auto or false")
    return has_template and option != "false"


def _generate(model: Any, tokenizer: Any, ids: list[int], args: argparse.Namespace) -> str:
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    options: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "do_sample": args.temperature > 0}
    if args.temperature > 0:
        options["temperature"] = args.temperature
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(args.seed)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pad_token_id=pad, **options
        )
    return tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True)


def _show(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{message.get('role')}: {message.get('content')}" for message in prompt)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m betadpo_lightning.commands.sample", description="Sample responses from an exported model."
    )
    parser.add_argument("--model", required=True, help="model directory (with its tokenizer)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    parser.add_argument("--prompts_file", help="JSONL file of prompts (strings, or objects with 'prompt')")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="most tokens per response (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sampling")
    parser.add_argument("--chat_template", choices=("auto", "true", "false"), default="auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sampling command.

    Args:
        argv: the arguments (``None``: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 for unusable prompts or options (the reason is printed to stderr).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = _parser()
    args = parser.parse_args(argv)
    if args.temperature < 0 or args.max_new_tokens < 1:
        parser.error("--temperature must be >= 0 and --max_new_tokens >= 1")
    try:
        prompts = [*args.prompt, *(read_prompts(args.prompts_file) if args.prompts_file else [])]
        if not prompts:
            raise ValueError("no prompt: give --prompt TEXT or --prompts_file FILE.jsonl")
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        use_template = _use_chat_template(tokenizer, args.chat_template, args.model)
        encoded = [encode_prompt(tokenizer, prompt, use_template) for prompt in prompts]
    except (OSError, ValueError) as error:
        print(f"sample: error: {error}", file=sys.stderr)
        return 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model).to(device).eval()
    for number, (prompt, ids) in enumerate(zip(prompts, encoded, strict=True), 1):
        response = _generate(model, tokenizer, ids, args)
        print(f"=== prompt {number} ===\n{_show(prompt)}\n=== response {number} ===\n{response}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
