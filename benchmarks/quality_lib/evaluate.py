"""Evaluation of a policy on the synthetic task: samples scored by the gold reward, KL to the reference, accuracy.

Every number here is computed outside training, in ``torch.no_grad()``:

* **samples**: one response per prompt, drawn at temperature 1 with no nucleus cut (the policy's own
  distribution, so that the KL estimate below is unbiased), at most ``max_new_tokens`` tokens, cut after the first
  EOS (kept, as in training);
* **gold reward**: :func:`~betadpo_lightning.data.synthetic.gold_reward` of the decoded response;
* **win rate**: against the reference's sample for the same prompt, ties counting one half;
* **KL(policy‖reference)**: the mean over the policy's samples of ``log π(y|x) − log π_ref(y|x)``, summed over the
  response tokens (EOS included);
* **preference accuracy**: the fraction of held-out pairs whose implicit reward margin (the training margin of the
  method: summed or length-averaged log-probs, minus the reference's) is positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from betadpo_lightning.data.collate import collate_preference_pairs
from betadpo_lightning.data.synthetic import gold_reward
from betadpo_lightning.data.tokenize import special_prefix
from betadpo_lightning.models.generation import generate_tokens, left_pad, until_eos
from betadpo_lightning.models.scoring import head_unsupported_reason, score_rows

BATCH = 128


@dataclass
class Samples:
    """One sampled response per prompt.

    Attributes:
        prompts: prompt ids (BOS first), one list per prompt.
        responses: response ids, EOS-terminated unless cut at the token limit.
        rewards: the gold reward of each response.
    """

    prompts: list[list[int]]
    responses: list[list[int]]
    rewards: list[float]


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Prompt ids as the data module builds them for standard rows: the special prefix, then the words."""
    prefix = special_prefix(tokenizer)
    return [prefix + tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]


def encode_pairs(tokenizer, rows: Sequence[dict]) -> list[dict]:
    """Standard synthetic rows as tokenized pairs (EOS-terminated responses), ready for the collate function."""
    eos = tokenizer.eos_token_id
    prompts = encode_prompts(tokenizer, [row["prompt"] for row in rows])

    def words(text: str) -> list[int]:
        return [*tokenizer(text, add_special_tokens=False)["input_ids"], eos]

    return [
        {
            "prompt_input_ids": prompt,
            "chosen_input_ids": words(row["chosen"]),
            "rejected_input_ids": words(row["rejected"]),
            "index": index,
        }
        for index, (prompt, row) in enumerate(zip(prompts, rows, strict=True))
    ]


@torch.no_grad()
def sample(
    model: nn.Module, tokenizer, prompts: list[list[int]], max_new_tokens: int, generator: torch.Generator
) -> Samples:
    """Draw one response per prompt at temperature 1 and score it with the gold reward."""
    model.eval()
    eos = {tokenizer.eos_token_id}
    responses: list[list[int]] = []
    for start in range(0, len(prompts), BATCH):
        chunk = prompts[start : start + BATCH]
        ids, mask = left_pad(chunk, tokenizer.pad_token_id, torch.device("cpu"))
        tokens = generate_tokens(
            model, ids, mask, max_new_tokens, temperature=1.0, generator=generator, eos_ids=eos, stop_early=True
        )
        for row in tokens.tolist():
            body = until_eos(row, eos)
            responses.append([*body, tokenizer.eos_token_id] if len(body) < len(row) else body)
    rewards = [gold_reward(tokenizer.decode(response, skip_special_tokens=True)) for response in responses]
    return Samples(prompts, responses, rewards)


def _response_batch(prompts: list[list[int]], responses: list[list[int]], pad: int) -> dict[str, Tensor]:
    """``(N, T)`` rows prompt + response with response-only labels (the preference batch's chosen half)."""
    pairs = [
        {"prompt_input_ids": p, "chosen_input_ids": r, "rejected_input_ids": r, "index": i}
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
    ]
    batch = collate_preference_pairs(pairs, pad_token_id=pad)
    rows = len(pairs)
    return {key: batch[key][:rows] for key in ("input_ids", "attention_mask", "labels")}


@torch.no_grad()
def sequence_logps(model: nn.Module, samples: Samples, pad: int) -> Tensor:
    """Summed log-probabilities of each sample's response tokens under ``model``, ``(N,)`` float32."""
    model.eval()
    head = head_unsupported_reason(model) is None
    out = []
    for start in range(0, len(samples.prompts), BATCH):
        stop = start + BATCH
        batch = _response_batch(samples.prompts[start:stop], samples.responses[start:stop], pad)
        out.append(score_rows(model, batch, head=head).logps.float())
    return torch.cat(out)


def kl_estimate(policy: nn.Module, reference: nn.Module, samples: Samples, pad: int) -> float:
    """Monte-Carlo KL(policy‖reference) from the policy's own samples (nats per response)."""
    return float((sequence_logps(policy, samples, pad) - sequence_logps(reference, samples, pad)).mean())


@torch.no_grad()
def preference_accuracy(module, pairs: list[dict], pad: int) -> float:
    """Fraction of pairs with a positive implicit reward margin under the module's own margin convention."""
    module.eval()
    positive = 0
    for start in range(0, len(pairs), BATCH):
        batch = collate_preference_pairs(pairs[start : start + BATCH], pad_token_id=pad)
        data = module.forward_pairs(batch)
        positive += int((module.preference_loss.margins(data) > 0).sum())
    return positive / len(pairs)


def win_rate(policy_rewards: Sequence[float], reference_rewards: Sequence[float]) -> float:
    """Fraction of prompts where the policy's sample beats the reference's, ties counting one half.

    Example:
        >>> win_rate([1.0, 0.0, 2.0, -1.0], [0.0, 0.0, 3.0, -2.0])
        0.625
    """
    score = sum(
        1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(policy_rewards, reference_rewards, strict=True)
    )
    return score / len(policy_rewards)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean."""
    return sum(values) / len(values)
