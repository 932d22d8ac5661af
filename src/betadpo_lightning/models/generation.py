"""Batched generation from a causal LM with a fixed number of forward passes and its own random stream.

:func:`generate_tokens` left-pads the prompts (decoder-only models continue from the last position), runs the
model with its key/value cache and picks each next token greedily (temperature 0) or by temperature and nucleus
(top-p) sampling from a ``torch.Generator`` it is given, so the global random streams are never drawn from. It runs
exactly ``max_new_tokens`` forward passes unless asked to stop once every row has ended: sharded models (FSDP2)
need every rank to run the same number of forward passes.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Sequence

import torch
from torch import Tensor, nn

from betadpo_lightning.models.scoring import transformers_model

__all__ = ["eos_token_ids", "generate_tokens", "left_pad", "next_tokens", "until_eos"]


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Prompts of different lengths as one right-aligned batch.

    Args:
        prompts: ``N`` token-id lists, none empty.
        pad_token_id: the id put before the shorter prompts.
        device: where the tensors go.

    Returns:
        ``(input_ids, attention_mask)``, both ``(N, T)`` with ``T`` the longest prompt; the mask is 0 on padding.

    Example:
        >>> ids, mask = left_pad([[5, 6, 7], [8]], pad_token_id=0, device=torch.device("cpu"))
        >>> ids.tolist(), mask.tolist()
        ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    if not prompts or any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("left_pad needs at least one prompt and no empty prompt")
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long, device=device)
        attention_mask[row, width - len(prompt) :] = 1
    return input_ids, attention_mask


def next_tokens(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Pick one token per row from next-token logits.

    Args:
        logits: ``(N, V)``.
        temperature: 0 for greedy (argmax), else the softmax temperature.
        top_p: nucleus sampling: draw only among the most likely tokens whose probabilities first reach ``top_p``
            (1 keeps every token); ignored when greedy.
        generator: the random stream of the draws (on the logits' device).

    Returns:
        The token ids, ``(N,)``.

    Example:
        >>> next_tokens(torch.tensor([[0.0, 2.0, 1.0]]), temperature=0.0, top_p=1.0, generator=None).tolist()
        [1]
    """
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # (N, V)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens, (N, V)
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # the first token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def eos_token_ids(model: nn.Module, tokenizer_eos: int | None) -> frozenset[int]:
    """The ids that end a response: the tokenizer's EOS and those of the model's generation config."""
    ids = {tokenizer_eos} if tokenizer_eos is not None else set()
    config = getattr(transformers_model(model), "generation_config", None)
    configured = getattr(config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(token) for token in configured)
    return frozenset(ids)


def until_eos(tokens: Sequence[int], eos_ids: Collection[int]) -> list[int]:
    """The tokens before the first end-of-sequence id.

    Example:
        >>> until_eos([4, 5, 2, 6], eos_ids={2})
        [4, 5]
    """
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return list(tokens[:position])
    return list(tokens)


def _forward_parameters(model: nn.Module) -> frozenset[str]:
    """The argument names of the ``transformers`` model's forward, behind peft and FSDP1 wrappers."""
    base = transformers_model(model)
    if type(base).__name__ == "FullyShardedDataParallel":
        base = transformers_model(base.module)
    return frozenset(inspect.signature(base.forward).parameters)


@torch.no_grad()
def generate_tokens(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    eos_ids: Collection[int] = (),
    stop_early: bool = False,
) -> Tensor:
    """Continue left-padded prompts with the model's key/value cache.

    Positions count from each row's first prompt token, so a padded row sees the positions it would see alone.

    Args:
        model: a ``transformers`` causal LM (or a peft / FSDP wrapper of one); its train/eval mode is left as is.
        input_ids: the prompts, left-padded, ``(N, T)``.
        attention_mask: 1 on prompt tokens, 0 on padding, ``(N, T)``.
        max_new_tokens: tokens generated per row.
        temperature: 0 for greedy decoding, else the sampling temperature.
        top_p: nucleus sampling threshold (1: none).
        generator: the random stream of the sampling draws.
        eos_ids: the end-of-sequence ids (used only by ``stop_early``).
        stop_early: stop once every row holds an end-of-sequence id; by default exactly ``max_new_tokens`` forward
            passes run (what sharded models need on every rank).

    Returns:
        The generated ids, ``(N, max_new_tokens)`` (fewer columns when it stopped early); rows go on past their
        end-of-sequence id (see :func:`until_eos`).
    """
    params = _forward_parameters(model)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    cache_argument = "cache" if "cache" in params else "past_key_values"  # the name since transformers 5
    mask = attention_mask
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)  # (N, T)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=input_ids.device)
    ended = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
    generated: list[Tensor] = []
    for step in range(max_new_tokens):
        token = next_tokens(out.logits[:, -1], temperature, top_p, generator)  # (N,)
        generated.append(token)
        ended |= torch.isin(token, eos)
        if step == max_new_tokens - 1 or (stop_early and bool(ended.all())):
            break
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=-1)
        position = mask.sum(dim=-1, keepdim=True) - 1  # (N, 1)
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=position,
            use_cache=True,
            **{cache_argument: out["cache"] if "cache" in out else out["past_key_values"]},
            **extra,
        )
    if not generated:
        return input_ids.new_zeros(len(input_ids), 0)
    return torch.stack(generated, dim=1)
