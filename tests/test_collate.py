"""collate_preference_pairs: the batch contract the preference models rely on."""

from __future__ import annotations

import pytest
import torch

from betadpo_lightning.data import collate_preference_pairs

PAD = 99


def _pair(prompt: list[int], chosen: list[int], rejected: list[int], index: int) -> dict[str, object]:
    return {"prompt_input_ids": prompt, "chosen_input_ids": chosen, "rejected_input_ids": rejected, "index": index}


SAMPLES = [
    _pair([1, 10, 11], [20, 21, 2], [30, 2], index=7),
    _pair([1, 12], [22, 2], [31, 32, 33, 34, 2], index=3),
]


def test_shapes_dtypes_and_keys():
    batch = collate_preference_pairs(SAMPLES, pad_token_id=PAD)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pair_index"}
    longest = max(
        len(s["prompt_input_ids"]) + len(s[k]) for s in SAMPLES for k in ("chosen_input_ids", "rejected_input_ids")
    )
    for key in ("input_ids", "attention_mask", "labels"):
        assert batch[key].shape == (4, longest)
        assert batch[key].dtype == torch.long
    assert batch["pair_index"].dtype == torch.long
    assert batch["pair_index"].tolist() == [7, 3]


def test_rows_are_chosen_then_rejected_in_pair_order_right_padded():
    batch = collate_preference_pairs(SAMPLES, pad_token_id=PAD)
    rows = batch["input_ids"].tolist()
    expected = [
        [1, 10, 11, 20, 21, 2, PAD],
        [1, 12, 22, 2, PAD, PAD, PAD],
        [1, 10, 11, 30, 2, PAD, PAD],
        [1, 12, 31, 32, 33, 34, 2],
    ]
    assert rows == expected
    assert batch["attention_mask"].tolist() == [[int(t != PAD) for t in row] for row in expected]


def test_labels_mask_prompt_and_padding_only():
    batch = collate_preference_pairs(SAMPLES, pad_token_id=PAD, ignore_index=-7)
    assert batch["labels"].tolist() == [
        [-7, -7, -7, 20, 21, 2, -7],
        [-7, -7, 22, 2, -7, -7, -7],
        [-7, -7, -7, 30, 2, -7, -7],
        [-7, -7, 31, 32, 33, 34, 2],
    ]


def test_pad_token_equal_to_eos_is_still_masked_by_position():
    # With pad == EOS (a common fix for tokenizers without pad), the real EOS keeps its label and mask.
    batch = collate_preference_pairs([_pair([1, 5], [6, 2], [2], index=0)], pad_token_id=2)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2], [1, 5, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 2], [-100, -100, 2, -100]]


@pytest.mark.parametrize(("multiple", "expected"), [(None, 7), (1, 7), (4, 8), (5, 10), (16, 16)])
def test_pad_to_multiple_of(multiple: int | None, expected: int):
    batch = collate_preference_pairs(SAMPLES, pad_token_id=PAD, pad_to_multiple_of=multiple)
    assert batch["input_ids"].shape[1] == expected
    assert (batch["input_ids"][:, 7:] == PAD).all()
    assert (batch["attention_mask"][:, 7:] == 0).all()
    assert (batch["labels"][:, 7:] == -100).all()


def test_accepts_tensors():
    tensor_samples = [{k: torch.tensor(v) if isinstance(v, list) else v for k, v in s.items()} for s in SAMPLES]
    expected = collate_preference_pairs(SAMPLES, pad_token_id=PAD)
    got = collate_preference_pairs(tensor_samples, pad_token_id=PAD)
    for key, value in expected.items():
        assert torch.equal(got[key], value)


def test_rejects_empty_batch_empty_response_and_bad_multiple():
    with pytest.raises(ValueError, match="empty list"):
        collate_preference_pairs([], pad_token_id=0)
    with pytest.raises(ValueError, match=r"sample 1: 'rejected_input_ids' is empty"):
        collate_preference_pairs([SAMPLES[0], _pair([1], [2], [], index=1)], pad_token_id=0)
    with pytest.raises(ValueError, match="sample 0: expected a sequence of token ids under 'chosen_input_ids'"):
        collate_preference_pairs([{"prompt_input_ids": [1], "rejected_input_ids": [2], "index": 0}], pad_token_id=0)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        collate_preference_pairs(SAMPLES, pad_token_id=0, pad_to_multiple_of=0)
