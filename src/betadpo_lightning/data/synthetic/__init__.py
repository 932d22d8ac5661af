"""Built-in synthetic preference dataset with a known gold reward.

Prompts and responses are made of a 57-word vocabulary; a response's gold reward is the sum of its words' fixed
scores (:func:`gold_reward`), and pairs are labelled by a Bradley–Terry draw on it, with optional label noise and a
chosen mix of easy (large-gap) and hard (small-gap) pairs. The data is written as JSONL beside a word-level
tokenizer of :data:`SYNTHETIC_VOCAB_SIZE` ids, so a tiny model can be configured against it.
"""

from betadpo_lightning.data.synthetic.config import SyntheticConfig
from betadpo_lightning.data.synthetic.files import split_files, synthetic_dir, write_synthetic_dataset
from betadpo_lightning.data.synthetic.generate import generate_split
from betadpo_lightning.data.synthetic.tokenizer import CHAT_TEMPLATE, build_synthetic_tokenizer
from betadpo_lightning.data.synthetic.vocab import SYNTHETIC_VOCAB_SIZE, WORD_SCORES, gold_reward

__all__ = [
    "CHAT_TEMPLATE",
    "SYNTHETIC_VOCAB_SIZE",
    "WORD_SCORES",
    "SyntheticConfig",
    "build_synthetic_tokenizer",
    "generate_split",
    "gold_reward",
    "split_files",
    "synthetic_dir",
    "write_synthetic_dataset",
]
