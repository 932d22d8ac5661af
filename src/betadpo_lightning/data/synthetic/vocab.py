"""Vocabulary of the synthetic preference dataset and its gold reward.

The vocabulary is fixed: 7 special tokens and 57 words, :data:`SYNTHETIC_VOCAB_SIZE` = 64 ids in all (ids are
assigned in the order of :data:`SPECIAL_TOKENS` followed by :data:`WORDS`).

Gold reward
-----------
Each word ``w`` has a fixed score ``s(w)`` (:data:`WORD_SCORES`): six good words score ``+1`` to ``+3``, six bad
words score ``-1`` to ``-3``, every other word scores ``0``. The gold reward of a response is the sum of the scores
of its whitespace-separated words::

    gold_reward(text) = sum(s(w) for w in text.split())

Special tokens and unknown words score ``0``. The reward does not depend on the prompt or on word order, so a
small causal language model learns it from preference pairs by shifting probability towards good words.
"""

from __future__ import annotations

from types import MappingProxyType

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS)

GOOD_WORDS = MappingProxyType(
    {"excellent": 3.0, "helpful": 2.5, "correct": 2.0, "clear": 1.5, "kind": 1.0, "precise": 1.0}
)
BAD_WORDS = MappingProxyType({"wrong": -3.0, "rude": -2.5, "useless": -2.0, "vague": -1.5, "lazy": -1.0, "messy": -1.0})
QUESTION_WORDS = ("what", "how", "why", "when", "where", "explain", "describe", "compare")
NEUTRAL_WORDS = (
    "the", "a", "of", "to", "and", "in", "on", "with", "for", "is", "it", "this", "that",
    "river", "city", "garden", "engine", "planet", "recipe", "market", "winter", "music", "bridge",
    "forest", "number", "letter", "train", "cloud", "stone", "light", "water",
    "answer", "story", "idea", "plan", "step", "way",
)  # fmt: skip
WORDS = (*GOOD_WORDS, *BAD_WORDS, *QUESTION_WORDS, *NEUTRAL_WORDS)
WORD_SCORES = MappingProxyType({**dict.fromkeys(WORDS, 0.0), **GOOD_WORDS, **BAD_WORDS})

SYNTHETIC_VOCAB_SIZE = 64
"""Number of token ids of the synthetic tokenizer (special tokens included); use it as a model's ``vocab_size``."""

if len(SPECIAL_TOKENS) + len(WORDS) != SYNTHETIC_VOCAB_SIZE or len(set(WORDS)) != len(WORDS):
    raise RuntimeError("the synthetic vocabulary must hold SYNTHETIC_VOCAB_SIZE distinct tokens")


def vocabulary() -> dict[str, int]:
    """Token → id mapping of the synthetic tokenizer.

    Returns:
        Special tokens first (``<pad>`` = 0, ``<unk>`` = 1, ``<s>`` = 2, ``</s>`` = 3, then the role tokens), then
        the words in the order of :data:`WORDS`.
    """
    return {token: index for index, token in enumerate((*SPECIAL_TOKENS, *WORDS))}


def gold_reward(text: str) -> float:
    """Gold reward of a response: the sum of its words' scores.

    Args:
        text: A response (or any text); words are separated by whitespace.

    Returns:
        ``sum(WORD_SCORES.get(w, 0.0) for w in text.split())``.

    Examples:
        >>> gold_reward("a clear and correct answer")
        3.5
        >>> gold_reward("wrong but kind </s>")
        -2.0
    """
    return sum(WORD_SCORES.get(word, 0.0) for word in text.split())
