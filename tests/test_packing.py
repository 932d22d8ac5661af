"""The packed, prefix-shared batch: hand-written layouts, and agreement with the padded collate."""

from __future__ import annotations

import pytest
import torch

from betadpo_lightning.data.collate import collate_preference_pairs
from betadpo_lightning.data.packed_views import chosen_segments, unpack_to_padded
from betadpo_lightning.data.packing import (
    check_packed_batch,
    is_packed,
    pack_preference_pairs,
    pack_sequences,
    packed_tokens,
    padded_rows,
)
from betadpo_lightning.models.packed_attention import _mask_mod, packed_attention_mask, packed_visibility

PAD = 99


def _pair(prompt, chosen, rejected, index):
    return {"prompt_input_ids": prompt, "chosen_input_ids": chosen, "rejected_input_ids": rejected, "index": index}


TWO = [_pair([1, 10, 11], [20, 21], [30], index=7), _pair([1, 12], [22], [31, 32], index=3)]


def _random_pairs(count: int, seed: int = 0, empty_prompt: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def ids(low: int, high: int) -> list[int]:
        return torch.randint(3, 90, (int(torch.randint(low, high, (1,), generator=g)),), generator=g).tolist()

    pairs = [_pair(ids(1, 7), ids(1, 6), ids(1, 6), index=10 + i) for i in range(count)]
    if empty_prompt:
        pairs[1]["prompt_input_ids"] = []
    return pairs


def test_two_pairs_in_one_row_by_hand():
    batch = pack_preference_pairs(TWO, pad_token_id=PAD)
    assert is_packed(batch)
    assert padded_rows(batch) == 4
    # segment 0: [1 10 11 | 20 21 | 30], segment 1: [1 12 | 22 | 31 32]
    assert batch["input_ids"].tolist() == [[1, 10, 11, 20, 21, 30, 1, 12, 22, 31, 32]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 2, 2, 3]]
    assert batch["segment_ids"].tolist() == [[0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]]
    assert batch["branch_ids"].tolist() == [[0, 0, 0, 1, 1, 2, 0, 0, 1, 2, 2]]
    # chosen 20 from the prompt's last (2), 21 from 20 (3); rejected 30 from the prompt's last (2); then pair 1
    assert batch["target_index"].tolist() == [2, 3, 2, 7, 7, 9]
    assert batch["target_ids"].tolist() == [20, 21, 30, 22, 31, 32]
    assert batch["target_row"].tolist() == [0, 0, 2, 1, 3, 3]
    assert batch["pair_index"].tolist() == [7, 3]
    assert all(batch[key].dtype == torch.long for key in batch)


def test_rows_split_at_the_budget_and_only_the_tail_is_padded():
    batch = pack_preference_pairs(TWO, pad_token_id=PAD, max_row_tokens=8, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[1, 10, 11, 20, 21, 30, PAD, PAD], [1, 12, 22, 31, 32, PAD, PAD, PAD]]
    assert batch["segment_ids"].tolist() == [[0] * 6 + [-1] * 2, [1] * 5 + [-1] * 3]
    assert batch["branch_ids"][1].tolist() == [0, 0, 1, 2, 2, -1, -1, -1]
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 2, 3, 0, 0, 0]
    assert batch["target_index"].tolist() == [2, 3, 2, 8 + 1, 8 + 1, 8 + 3]
    # a segment longer than the budget gets a row of its own
    alone = pack_preference_pairs(TWO, pad_token_id=PAD, max_row_tokens=2)
    assert alone["input_ids"].shape == (2, 6)


def test_an_empty_prompt_leaves_each_answers_first_token_unpredicted_as_in_the_padded_batch():
    batch = pack_preference_pairs([_pair([], [5, 6], [7, 8, 9], index=0)], pad_token_id=PAD)
    assert batch["target_index"].tolist() == [0, 2, 3]  # 6 from 5; 8 from 7, 9 from 8
    assert batch["target_ids"].tolist() == [6, 8, 9]
    padded = collate_preference_pairs([_pair([], [5, 6], [7, 8, 9], index=0)], pad_token_id=PAD)
    assert (padded["labels"][:, 1:] != -100).sum(-1).tolist() == [1, 2]


@pytest.mark.parametrize("max_row_tokens", [None, 12, 25])
def test_every_target_is_the_padded_label_one_column_after_its_predictor(max_row_tokens):
    """Against the padded collate: the token after the predicting state's column, in the token's padded row."""
    samples = _random_pairs(6, seed=1, empty_prompt=True)
    batch = pack_preference_pairs(samples, pad_token_id=PAD, max_row_tokens=max_row_tokens, pad_to_multiple_of=8)
    padded = collate_preference_pairs(samples, pad_token_id=PAD)
    length = batch["input_ids"].shape[1]
    rows, cols = batch["target_index"] // length, batch["target_index"] % length
    assert bool((batch["segment_ids"][rows, cols] == batch["target_row"] % 6).all())  # predicted in its own segment
    label_cols = batch["position_ids"][rows, cols] + 1
    got = sorted(zip(batch["target_row"].tolist(), label_cols.tolist(), batch["target_ids"].tolist(), strict=True))
    want_rows, want_cols = (padded["labels"] != -100).nonzero(as_tuple=True)
    want_cols_ok = want_cols > 0  # column 0 is never predicted
    want = sorted(
        zip(
            want_rows[want_cols_ok].tolist(),
            want_cols[want_cols_ok].tolist(),
            padded["labels"][want_rows, want_cols][want_cols_ok].tolist(),
            strict=True,
        )
    )
    assert got == want


@pytest.mark.parametrize("max_row_tokens", [None, 10])
def test_unpack_gives_the_padded_collate_with_the_per_pair_fields(max_row_tokens):
    samples = _random_pairs(5, seed=2, empty_prompt=True)
    for i, sample in enumerate(samples):
        sample |= {"reference_chosen_logps": -1.0 - i, "reference_rejected_logps": -2.0 - i, "padding": i == 4}
    packed = pack_preference_pairs(samples, pad_token_id=PAD, max_row_tokens=max_row_tokens)
    want = collate_preference_pairs(samples, pad_token_id=PAD)
    got = unpack_to_padded(packed, pad_token_id=PAD)
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    assert torch.equal(packed["reference_logps"], want["reference_logps"])
    assert packed["is_padding"].tolist() == [False] * 4 + [True]


def test_packed_tokens_is_the_segment_length():
    assert [packed_tokens(sample) for sample in TWO] == [6, 5]
    batch = pack_preference_pairs(TWO, pad_token_id=PAD)
    assert batch["input_ids"].numel() == sum(packed_tokens(sample) for sample in TWO)


def test_chosen_segments_is_pack_sequences_of_the_chosen_answers():
    samples = _random_pairs(4, seed=3, empty_prompt=True)
    got = chosen_segments(pack_preference_pairs(samples, pad_token_id=PAD), pad_token_id=PAD)
    want = pack_sequences(samples, pad_token_id=PAD)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    # several rows: same segments, each row closed up and padded to the new longest row
    multi = chosen_segments(pack_preference_pairs(samples, pad_token_id=PAD, max_row_tokens=14), pad_token_id=PAD)
    assert bool((multi["branch_ids"] != 2).all())
    order = torch.sort(multi["target_row"], stable=True).indices  # rows may hold the pairs in another order
    flat = multi["input_ids"].flatten()[multi["target_index"][order]]  # the predicting token
    want_flat = want["input_ids"].flatten()[want["target_index"]]
    assert torch.equal(flat, want_flat)
    assert torch.equal(multi["target_ids"][order], want["target_ids"])
    assert torch.equal(multi["target_row"][order], want["target_row"])


def test_bad_input_is_refused_with_the_field_named():
    with pytest.raises(ValueError, match="empty list"):
        pack_preference_pairs([], pad_token_id=PAD)
    with pytest.raises(ValueError, match="sample 1: 'rejected_input_ids' is empty"):
        pack_preference_pairs([TWO[0], _pair([1], [2], [], index=0)], pad_token_id=PAD)
    with pytest.raises(ValueError, match="max_row_tokens must be a positive integer"):
        pack_preference_pairs(TWO, pad_token_id=PAD, max_row_tokens=0)
    batch = pack_preference_pairs(TWO, pad_token_id=PAD)
    with pytest.raises(KeyError, match="target_row"):
        check_packed_batch({k: v for k, v in batch.items() if k != "target_row"})
    with pytest.raises(ValueError, match="`branch_ids` of shape"):
        check_packed_batch(batch | {"branch_ids": batch["branch_ids"][:, :-1]})
    with pytest.raises(KeyError, match="pack_preference_pairs"):
        unpack_to_padded({"input_ids": batch["input_ids"]}, pad_token_id=PAD)


def _visibility_loop(batch: dict, window: int | None = None) -> torch.Tensor:
    """The attention rule, one query and key at a time."""
    seg, branch, pos = (batch[k].tolist() for k in ("segment_ids", "branch_ids", "position_ids"))
    rows, length = len(seg), len(seg[0])
    out = torch.zeros(rows, 1, length, length, dtype=torch.bool)
    for r in range(rows):
        for q in range(length):
            for k in range(q + 1):
                same = seg[r][q] == seg[r][k] and branch[r][k] in (0, branch[r][q])
                out[r, 0, q, k] = same and (window is None or pos[r][q] - pos[r][k] < window)
    return out


@pytest.mark.parametrize("window", [None, 3])
def test_the_mask_of_every_backend_is_the_attention_rule(window):
    batch = pack_preference_pairs(_random_pairs(5, seed=4), pad_token_id=PAD, max_row_tokens=20)
    want = _visibility_loop(batch, window)
    seg, branch, pos = batch["segment_ids"], batch["branch_ids"], batch["position_ids"]
    assert torch.equal(packed_visibility(seg, branch, pos, window), want)
    assert torch.equal(packed_attention_mask(batch, "sdpa", sliding_window=window), want)
    eager = packed_attention_mask(batch, "eager", torch.float32, window)
    assert torch.equal(eager == 0, want)
    assert bool((eager[~want] == torch.finfo(torch.float32).min).all())
    rows, length = seg.shape
    b, q, k = torch.arange(rows)[:, None, None], torch.arange(length)[None, :, None], torch.arange(length)[None, None]
    assert torch.equal(_mask_mod(seg, branch, pos, window)(b, 0, q, k)[:, None], want)  # FlexAttention's mask_mod
    assert bool(want.any(-1).all())  # every query (padding included) sees at least itself
    rejected = (branch[:, :, None] == 2) & (branch[:, None, :] == 1)
    assert not bool((want[:, 0] & rejected).any())  # the rejected answer never sees the chosen one


def test_flex_block_mask_builds_on_cpu():
    batch = pack_preference_pairs(_random_pairs(3, seed=5), pad_token_id=PAD)
    block_mask = packed_attention_mask(batch, "flex_attention")
    assert type(block_mask).__name__ == "BlockMask"
    assert tuple(block_mask.shape[-2:]) == tuple(batch["input_ids"].shape[1:]) * 2
