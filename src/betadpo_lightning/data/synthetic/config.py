"""Options of the synthetic preference dataset."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

SYNTHETIC_FORMAT_VERSION = 1
"""Bumped whenever the generator's output for a given config changes; part of :meth:`SyntheticConfig.digest`."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Options of the synthetic preference dataset.

    Each pair holds two responses drawn independently; a pair is *easy* when the gold rewards of its responses
    differ by at least ``easy_min_gap`` and *hard* when they differ by more than 0 and at most ``hard_max_gap``.
    The preferred response is drawn from the Bradley–Terry model
    ``P(a ≻ b) = sigmoid((gold_reward(a) - gold_reward(b)) / temperature)``, then exactly
    ``round(label_noise * size)`` pairs of each split, picked at random, have their labels flipped.

    Args:
        train_size: Number of training pairs.
        validation_size: Number of validation pairs.
        seed: Seed of the generator; the same config gives the same files, byte for byte.
        label_noise: Fraction of pairs whose label is flipped after the Bradley–Terry draw, in ``[0, 1]``.
        hard_fraction: Fraction of hard (small-gap) pairs, in ``[0, 1]``; the rest are easy.
        easy_min_gap: Smallest gold-reward gap of an easy pair.
        hard_max_gap: Largest gold-reward gap of a hard pair.
        temperature: Temperature of the Bradley–Terry draw (lower: fewer labels against the gold reward).
        scored_word_probability: Probability that a response word is a good or bad word rather than a neutral one.
        min_response_words: Fewest words in a response.
        max_response_words: Most words in a response.
        format: ``"standard"`` rows (prompt/chosen/rejected strings) or ``"conversational"`` rows (a prompt string
            and chosen/rejected message lists holding the user turn and the assistant turn).
    """

    train_size: int = 2048
    validation_size: int = 256
    seed: int = 0
    label_noise: float = 0.0
    hard_fraction: float = 0.25
    easy_min_gap: float = 3.0
    hard_max_gap: float = 1.0
    temperature: float = 1.0
    scored_word_probability: float = 0.3
    min_response_words: int = 4
    max_response_words: int = 10
    format: Literal["standard", "conversational"] = "standard"

    def __post_init__(self) -> None:
        checks = {
            "train_size >= 1": self.train_size >= 1,
            "validation_size >= 0": self.validation_size >= 0,
            "0 <= label_noise <= 1": 0.0 <= self.label_noise <= 1.0,
            "0 <= hard_fraction <= 1": 0.0 <= self.hard_fraction <= 1.0,
            "0 < hard_max_gap < easy_min_gap <= 12": 0.0 < self.hard_max_gap < self.easy_min_gap <= 12.0,
            "temperature > 0": self.temperature > 0.0,
            "0 < scored_word_probability <= 1": 0.0 < self.scored_word_probability <= 1.0,
            "1 <= min_response_words <= max_response_words": 1 <= self.min_response_words <= self.max_response_words,
            "format in ('standard', 'conversational')": self.format in ("standard", "conversational"),
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid SyntheticConfig {self}: expected {', '.join(failed)}")

    def digest(self) -> str:
        """Short hash of the options and :data:`SYNTHETIC_FORMAT_VERSION`, naming the dataset's folder.

        Returns:
            12 hexadecimal characters.
        """
        payload = json.dumps({"version": SYNTHETIC_FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]
