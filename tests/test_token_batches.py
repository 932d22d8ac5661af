"""Micro-batches by a token budget: the budget, every pair once, seeded order, exact resumption, equal ranks."""

from __future__ import annotations

import functools

import pytest
import torch

from betadpo_lightning.data.batching import BatchPlan, check_token_budget, longest_pair_tokens
from betadpo_lightning.data.collate import collate_preference_pairs
from betadpo_lightning.data.dataloaders import ResumableDataLoader
from betadpo_lightning.data.errors import PreferenceDataError
from betadpo_lightning.data.packing import pack_preference_pairs, packed_tokens
from betadpo_lightning.data.token_batches import EvalTokenSampler, TokenBudgetSampler, TokenCost, pair_sizes
from helpers.tiny import RandomPairs


def _sizes(n: int, seed: int = 0, longest: int = 40) -> torch.Tensor:
    """Token counts of ``n`` pairs: prompts 1..longest, answers 1..longest/2."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, longest + 1, (n, 1), generator=g)
    answers = torch.randint(1, longest // 2 + 1, (n, 2), generator=g)
    return torch.cat([prompt, answers], dim=1)


def _trunk_tokens(sizes: torch.Tensor, batch: list[int], packed: bool, multiple: int | None = None) -> int:
    """Independent count of the tokens a micro-batch sends through the trunk."""
    rows = [sizes[i].tolist() for i in batch]
    if packed:
        return sum(p + c + r for p, c, r in rows)
    longest = max(max(p + c, p + r) for p, c, r in rows)
    if multiple:
        longest = -(-longest // multiple) * multiple
    return 2 * len(rows) * longest


def _all_ranks(world: int, epoch: int = 0, **kwargs) -> list[list[list[int]]]:
    samplers = [TokenBudgetSampler(num_replicas=world, rank=rank, **kwargs) for rank in range(world)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return [list(sampler) for sampler in samplers]


@pytest.mark.parametrize(("packed", "multiple"), [(True, None), (False, None), (False, 8)])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_budget_every_pair_once_and_equal_ranks(packed, multiple, world):
    sizes, budget = _sizes(301, seed=world), 400
    cost = TokenCost(packed=packed, pad_to_multiple_of=multiple)
    for epoch in range(3):
        shares = _all_ranks(world, epoch, sizes=sizes, max_tokens=budget, cost=cost, seed=3)
        lengths = {len(share) for share in shares}
        sampler = TokenBudgetSampler(sizes, budget, cost, num_replicas=world, seed=3)
        assert lengths == {len(sampler)}  # the same count on every rank, in every epoch
        flat = [i for share in shares for batch in share for i in batch]
        assert sorted(flat) == list(range(301))  # every pair exactly once
        for share in shares:
            for batch in share:
                assert _trunk_tokens(sizes, batch, packed, multiple) <= budget


def test_batches_fill_the_budget_and_group_lengths():
    """Few micro-batches (close to total tokens / budget) and, padded, far less padding than random batches."""
    sizes, budget = _sizes(2000, seed=1), 1000
    padded = TokenBudgetSampler(sizes, budget, TokenCost(packed=False), seed=0)
    batches = list(padded)
    real = sum(2 * int(sizes[i, 0]) + int(sizes[i, 1:].sum()) for b in batches for i in b)  # both rows' tokens
    sent = sum(_trunk_tokens(sizes, b, packed=False) for b in batches)
    assert real / sent > 0.8
    # the same pair counts drawn at random: padding to the longest row of a random group wastes far more
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(2000, generator=g).tolist()
    random_sent, start = 0, 0
    for b in batches:
        random_sent += _trunk_tokens(sizes, order[start : start + len(b)], packed=False)
        start += len(b)
    assert sent < 0.85 * random_sent
    packed = TokenBudgetSampler(sizes, budget, TokenCost(packed=True), seed=0)
    total = int(sizes.sum())
    assert len(packed) <= 1.05 * total / budget + 2


def test_steps_group_micro_batches_of_similar_cost():
    sizes, budget, world = _sizes(500, seed=2), 300, 4
    sampler = TokenBudgetSampler(sizes, budget, TokenCost(packed=False), num_replicas=world, seed=1)
    batches = sampler.global_batches(0)
    costs = [_trunk_tokens(sizes, b, packed=False) for b in batches]
    steps = [sorted(costs[s : s + world], reverse=True) for s in range(0, len(costs), world)]
    # the steps are consecutive runs of the micro-batches sorted by cost
    assert [c for step in sorted(steps, reverse=True) for c in step] == sorted(costs, reverse=True)


def test_order_depends_only_on_seed_and_epoch():
    sizes = _sizes(200)
    a = TokenBudgetSampler(sizes, 300, seed=7)
    b = TokenBudgetSampler(sizes, 300, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert sorted(map(sorted, list(a))) != sorted(map(sorted, list(b)))  # other micro-batches, not only reordered
    assert list(a) != list(TokenBudgetSampler(sizes, 300, seed=8, num_replicas=1).__iter__())


def _loader(dataset, budget: int, world: int = 1, rank: int = 0, seed: int = 5) -> ResumableDataLoader:
    plan = BatchPlan(batch_size=1, eval_batch_size=1, packing=True, max_tokens=budget, seed=seed)
    return plan.train_loader(dataset, pad_token_id=0, num_replicas=world, rank=rank)  # type: ignore[return-value]


def _pairs(loader) -> list[list[int]]:
    return [batch["pair_index"].tolist() for batch in loader]


@pytest.mark.parametrize("consumed", [0, 1, 4])
@pytest.mark.parametrize("world", [1, 2])
def test_resume_mid_epoch_gives_exactly_the_remaining_batches(consumed, world):
    dataset = RandomPairs(40)
    for rank in range(world):
        full = _loader(dataset, 40, world, rank)
        full.sampler.set_epoch(1)
        expected = _pairs(full)
        assert len(expected) == len(full) > consumed

        first = _loader(dataset, 40, world, rank)
        first.sampler.set_epoch(1)
        iterator = iter(first)
        head = [next(iterator)["pair_index"].tolist() for _ in range(consumed)]
        state = first.state_dict()
        assert state == {"epoch": 1, "batches": consumed}

        resumed = _loader(dataset, 40, world, rank)
        resumed.load_state_dict(state)
        assert len(resumed) == len(full)  # Lightning counts the consumed batches itself
        assert head + _pairs(resumed) == expected
        resumed.sampler.set_epoch(2)
        assert len(_pairs(resumed)) == len(full)  # the next epoch: whole again


def test_a_finished_epoch_resumes_at_the_next_one():
    dataset = RandomPairs(30)
    loader = _loader(dataset, 40)
    loader.load_state_dict({"epoch": 0, "batches": len(loader)})
    assert loader.sampler.epoch == 1
    assert sorted(i for batch in _pairs(loader) for i in batch) == list(range(30))


def test_packed_and_padded_loaders_send_at_most_the_budget():
    dataset = RandomPairs(50)
    sizes = pair_sizes(dataset)
    assert sizes[:, 0].tolist() == [len(dataset[i]["prompt_input_ids"]) for i in range(50)]
    for packing, multiple in ((True, None), (False, None), (False, 4)):
        plan = BatchPlan(1, 1, packing=packing, max_tokens=48, pad_to_multiple_of=multiple)
        seen = []
        for batch in plan.train_loader(dataset, pad_token_id=0):
            if packing:
                assert "segment_ids" in batch
                real = int((batch["segment_ids"] >= 0).sum())
                assert real == batch["input_ids"].numel() <= 48  # one row, no tail padding
                assert real == sum(packed_tokens(dataset[i]) for i in batch["pair_index"].tolist())
            else:
                assert batch["input_ids"].numel() <= 48
            seen += batch["pair_index"].tolist()
        assert sorted(seen) == list(range(50))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_evaluation_counts_every_pair_once_and_flags_the_padding(world):
    dataset = RandomPairs(23)
    plan = BatchPlan(1, 1, packing=False, max_tokens=30)
    counted, lengths = [], set()
    for rank in range(world):
        loader = plan.eval_loader(dataset, pad_token_id=0, num_replicas=world, rank=rank)
        batches = list(loader)
        lengths.add(len(batches))
        assert len(batches) == len(loader)
        for batch in batches:
            assert batch["input_ids"].numel() <= 30
            counted += batch["pair_index"][~batch["is_padding"]].tolist()
    assert len(lengths) == 1
    assert sorted(counted) == list(range(23))


def test_eval_sampler_pads_ranks_with_flagged_single_pairs():
    sizes = torch.tensor([[3, 2, 2]] * 5)  # 7 tokens packed: 2 pairs per budget of 14
    sampler = EvalTokenSampler(sizes, 14, TokenCost(packed=True), num_replicas=4, rank=3)
    assert sampler.batches[:3] == [[0, 1], [2, 3], [4]]
    assert len(sampler.batches) == 4
    assert list(sampler) == [[-1 - 4]]  # rank 3 evaluates a repeat of pair 4, flagged


def test_a_pair_over_the_budget_is_named():
    sizes = torch.tensor([[2, 3, 3], [10, 9, 1], [1, 1, 1]])
    with pytest.raises(PreferenceDataError, match=r"row 41, field 'max_tokens'.*needs 20 tokens.*max_tokens=19"):
        TokenBudgetSampler(sizes, 19, TokenCost(packed=True), row_of=lambda position: 40 + position)
    with pytest.raises(PreferenceDataError, match=r"row 1.*needs 38 tokens.*padded.*10 prompt, 9 chosen.*'validation'"):
        EvalTokenSampler(sizes, 37, TokenCost(packed=False), split="validation")
    EvalTokenSampler(sizes, 38, TokenCost(packed=False))  # 2 rows of 10 + 9 tokens fit exactly


def test_token_budget_options_are_checked():
    assert longest_pair_tokens(100, packing=True) == 200
    assert longest_pair_tokens(100, packing=False, pad_to_multiple_of=64) == 256
    check_token_budget(200, 100, packing=True)
    with pytest.raises(ValueError, match=r"max_tokens=255 is below the 256 tokens.*padded.*max_length=100"):
        check_token_budget(255, 100, packing=False, pad_to_multiple_of=64)
    check_token_budget(5, None, packing=False)  # no max_length: checked pair by pair when loading
    with pytest.raises(ValueError, match="chunk_batches"):
        TokenBudgetSampler(_sizes(4), 100, chunk_batches=0)


def test_fewer_pairs_than_ranks_repeat_pairs_to_keep_the_ranks_equal():
    sizes = _sizes(3)
    shares = _all_ranks(4, sizes=sizes, max_tokens=1000, seed=0)
    assert {len(share) for share in shares} == {1}
    flat = sorted(i for share in shares for batch in share for i in batch)
    assert set(flat) == {0, 1, 2}
    assert len(flat) == 4


def test_collate_functions_match_the_plan():
    samples = [RandomPairs(3)[i] for i in range(3)]
    packed = BatchPlan(1, 1, packing=True).collate_fn(pad_token_id=0)(samples)
    padded = BatchPlan(1, 1, packing=False, pad_to_multiple_of=8).collate_fn(pad_token_id=0)(samples)
    expected = functools.partial(collate_preference_pairs, pad_token_id=0, pad_to_multiple_of=8)(samples)
    assert torch.equal(padded["input_ids"], expected["input_ids"])
    assert torch.equal(packed["input_ids"], pack_preference_pairs(samples, pad_token_id=0)["input_ids"])
