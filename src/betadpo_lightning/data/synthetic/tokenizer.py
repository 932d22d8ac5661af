"""The word-level tokenizer of the synthetic dataset, built offline in code.

One id per word of the fixed vocabulary (:func:`~betadpo_lightning.data.synthetic.vocab.vocabulary`), words split
at whitespace, ``<s>`` added in front of every sequence, and a chat template that writes each turn as
``"<|role|> content </s> "`` (with ``"<|assistant|> "`` as the generation prompt), so a rendered assistant turn ends
with EOS.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from betadpo_lightning.data.synthetic.vocab import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    ROLE_TOKENS,
    SYNTHETIC_VOCAB_SIZE,
    UNK_TOKEN,
    vocabulary,
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|> {{ message['content'] }} {{ eos_token }} "
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)

MODEL_MAX_LENGTH = 512


def build_synthetic_tokenizer() -> PreTrainedTokenizerFast:
    """Build the synthetic dataset's tokenizer.

    Returns:
        A fast tokenizer with ``len(tokenizer) == SYNTHETIC_VOCAB_SIZE``, BOS ``<s>``, EOS ``</s>``, PAD ``<pad>``,
        UNK ``<unk>`` and :data:`CHAT_TEMPLATE`.

    Examples:
        >>> tokenizer = build_synthetic_tokenizer()
        >>> tokenizer("explain the clear answer")["input_ids"]
        [2, 24, 27, 10, 58]
        >>> tokenizer.decode([2, 24, 27, 10, 58], skip_special_tokens=True)
        'explain the clear answer'
    """
    vocab = vocabulary()
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B", special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=list(ROLE_TOKENS),
        model_max_length=MODEL_MAX_LENGTH,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if len(tokenizer) != SYNTHETIC_VOCAB_SIZE:
        raise RuntimeError(f"synthetic tokenizer has {len(tokenizer)} ids, expected {SYNTHETIC_VOCAB_SIZE}")
    return tokenizer
