"""Generate the rows of the synthetic preference dataset.

A prompt is a question word followed by 2–6 neutral words. Each response has ``min_response_words`` to
``max_response_words`` words; each word is, with probability ``scored_word_probability``, a good or bad word (picked
uniformly among the twelve) and otherwise a neutral word. Two responses are drawn until their gold-reward gap fits
the pair's difficulty; the preferred one is then drawn from the Bradley–Terry model on the gold reward, and a fixed
number of pairs get their labels flipped (see :class:`~betadpo_lightning.data.synthetic.config.SyntheticConfig`).

Besides ``prompt``, ``chosen`` and ``rejected``, each row records ``chosen_reward`` and ``rejected_reward`` (gold
rewards of the responses), ``difficulty`` (``"easy"`` or ``"hard"``) and ``flipped`` (whether label noise swapped it).
"""

from __future__ import annotations

import math
import random
from typing import Literal

from betadpo_lightning.data.synthetic.config import SyntheticConfig
from betadpo_lightning.data.synthetic.vocab import BAD_WORDS, GOOD_WORDS, NEUTRAL_WORDS, QUESTION_WORDS, gold_reward

SplitName = Literal["train", "validation"]
SyntheticRow = dict[str, str | float | bool | list[dict[str, str]]]

_MAX_DRAWS = 10_000
_SCORED_WORDS = (*GOOD_WORDS, *BAD_WORDS)


def _sigmoid(x: float) -> float:
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _prompt(rng: random.Random) -> str:
    words = [rng.choice(QUESTION_WORDS)] + [rng.choice(NEUTRAL_WORDS) for _ in range(rng.randint(2, 6))]
    return " ".join(words)


def _response(rng: random.Random, config: SyntheticConfig) -> str:
    length = rng.randint(config.min_response_words, config.max_response_words)
    words = [
        rng.choice(_SCORED_WORDS) if rng.random() < config.scored_word_probability else rng.choice(NEUTRAL_WORDS)
        for _ in range(length)
    ]
    return " ".join(words)


def _draw_responses(rng: random.Random, config: SyntheticConfig, hard: bool) -> tuple[str, str]:
    for _ in range(_MAX_DRAWS):
        first, second = _response(rng, config), _response(rng, config)
        gap = abs(gold_reward(first) - gold_reward(second))
        if (0.0 < gap <= config.hard_max_gap) if hard else gap >= config.easy_min_gap:
            return first, second
    kind = f"0 < gap <= {config.hard_max_gap}" if hard else f"gap >= {config.easy_min_gap}"
    raise ValueError(f"no response pair with {kind} in {_MAX_DRAWS} draws; widen the gaps or the response lengths")


def _row(config: SyntheticConfig, prompt: str, chosen: str, rejected: str) -> SyntheticRow:
    if config.format == "standard":
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    user = {"role": "user", "content": prompt}
    return {
        "prompt": prompt,
        "chosen": [user, {"role": "assistant", "content": chosen}],
        "rejected": [user, {"role": "assistant", "content": rejected}],
    }


def generate_split(config: SyntheticConfig, split: SplitName) -> list[SyntheticRow]:
    """Generate the rows of one split.

    Args:
        config: Dataset options.
        split: ``"train"`` or ``"validation"``; each split has its own random stream derived from ``config.seed``.

    Returns:
        ``config.train_size`` or ``config.validation_size`` rows.

    Raises:
        ValueError: If no response pair fits a difficulty's gap within a bounded number of draws.
    """
    size = config.train_size if split == "train" else config.validation_size
    rng = random.Random(f"betadpo-synthetic:{config.seed}:{split}")
    hard = round(config.hard_fraction * size)
    difficulties = ["hard"] * hard + ["easy"] * (size - hard)
    rng.shuffle(difficulties)
    flipped = set(rng.sample(range(size), round(config.label_noise * size)))
    rows = []
    for position, difficulty in enumerate(difficulties):
        prompt = _prompt(rng)
        first, second = _draw_responses(rng, config, hard=difficulty == "hard")
        p_first = _sigmoid((gold_reward(first) - gold_reward(second)) / config.temperature)
        chosen, rejected = (first, second) if rng.random() < p_first else (second, first)
        if position in flipped:
            chosen, rejected = rejected, chosen
        row = _row(config, prompt, chosen, rejected)
        row.update(
            chosen_reward=gold_reward(chosen),
            rejected_reward=gold_reward(rejected),
            difficulty=difficulty,
            flipped=position in flipped,
        )
        rows.append(row)
    return rows
