"""The ``wpo`` extra: WPO's per-row log-weight, from full logits, from the response-only head, and through PairForward,
against a float64 loop written from the formula ``mean_t [log p(y_t) − log Σ_v p_v(t)²]``."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from betadpo_lightning.core import chunked
from betadpo_lightning.core.head import head_wpo_logps
from betadpo_lightning.core.logps import sequence_wpo_logps
from betadpo_lightning.core.types import EXTRAS, PairData
from betadpo_lightning.models.building import disable_dropout
from betadpo_lightning.models.pair_forward import PairForward, ScoringModels
from betadpo_lightning.models.reference import FrozenReference, NoReference
from betadpo_lightning.models.scoring import score_rows
from helpers.tiny import TINY_LLAMA, RandomPairs, collate_pairs


def _naive_wpo(logits: list[list[float]], labels: list[int], ignore: int = -100) -> float:
    """Position t predicts labels[t + 1]; the mean over counted positions, 0 for none (plain float64 Python)."""
    values = []
    for t in range(len(labels) - 1):
        target = labels[t + 1]
        if target == ignore:
            continue
        row = logits[t]
        top = max(row)
        lse = top + math.log(sum(math.exp(z - top) for z in row))
        logp = [z - lse for z in row]
        values.append(logp[target] - math.log(sum(math.exp(2 * lp) for lp in logp)))
    return sum(values) / len(values) if values else 0.0


def _case(n: int, t: int, v: int, dtype: torch.dtype, seed: int, ignore: int = -100):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, t, v, generator=g, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, v, (n, t), generator=g)
    labels[:, : t // 3] = ignore  # a prompt
    labels[0, -1] = ignore  # padding
    return logits, labels


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**TINY_LLAMA))
    disable_dropout(model)
    return model.train()


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return collate_pairs([RandomPairs(16, seed=seed)[i] for i in range(4)])


def test_the_extra_is_declared():
    assert EXTRAS["wpo"] == ("policy_chosen_wpo", "policy_rejected_wpo")
    pairs = PairData.from_rows(torch.tensor([-1.0, -2.0]), torch.zeros(2), wpo=torch.tensor([-0.5, -0.7]))
    assert pairs.extras == {"wpo"}
    assert pairs.policy_chosen_wpo.tolist() == [-0.5]
    assert pairs.policy_rejected_wpo.tolist() == pytest.approx([-0.7])
    assert pairs.select({"wpo"}).policy_rejected_wpo is not None


def test_hand_computed_cases():
    """Uniform over V: log(1/V) − log(V · 1/V²) = 0. One-hot-ish z = [L, 0, 0]: at the peak ≈ 0, elsewhere ≈ −L."""
    assert sequence_wpo_logps(torch.zeros(1, 3, 5), torch.tensor([[-100, 1, 4]])).tolist() == [0.0]
    big = 30.0
    logits = torch.tensor([[[big, 0.0, 0.0], [big, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    got = sequence_wpo_logps(logits, torch.tensor([[-100, 0, 1]]))  # targets: the peak, then a non-peak token
    assert got.item() == pytest.approx((0.0 + -big) / 2, abs=1e-5)
    assert sequence_wpo_logps(logits, torch.full((1, 3), -100)).tolist() == [0.0]  # no response token


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_full_logits_against_a_float64_loop(dtype, monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 3 * 11)  # three positions per chunk
    logits, labels = _case(3, 9, 11, dtype, seed=1)
    logits.requires_grad_(dtype != torch.bfloat16)
    got = sequence_wpo_logps(logits, labels)
    assert got.dtype == torch.float32
    assert not got.requires_grad
    want = [_naive_wpo(logits[i].double().tolist(), labels[i].tolist()) for i in range(3)]
    assert got.tolist() == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_custom_ignore_index_and_shapes():
    logits, labels = _case(2, 6, 7, torch.float32, seed=2, ignore=7)
    got = sequence_wpo_logps(logits, labels, ignore_index=7)
    want = [_naive_wpo(logits[i].double().tolist(), labels[i].tolist(), ignore=7) for i in range(2)]
    assert got.tolist() == pytest.approx(want, rel=1e-5, abs=1e-5)
    with pytest.raises(ValueError, match="Expected `logits` of shape"):
        sequence_wpo_logps(logits[0], labels[0])


def test_head_per_position_values_equal_the_full_logits(monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 2 * 13)
    g = torch.Generator().manual_seed(3)
    hidden, weight, bias = torch.randn(9, 4, generator=g), torch.randn(13, 4, generator=g), torch.randn(13, generator=g)
    targets = torch.randint(0, 13, (9,), generator=g)
    got = head_wpo_logps(hidden, weight, targets, bias)
    assert got.shape == (9,)
    assert got.dtype == torch.float32
    logits = torch.cat([hidden @ weight.T + bias, torch.zeros(1, 13)])[None]  # position 9 predicts nothing
    labels = torch.cat([torch.tensor([-100]), targets])[None]
    torch.testing.assert_close(got.mean(), sequence_wpo_logps(logits, labels)[0])
    want = [_naive_wpo(logits[0].double().tolist()[t : t + 2], [-100, int(targets[t])]) for t in range(9)]
    assert got.tolist() == pytest.approx(want, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("grad", [True, False])
def test_score_rows_head_equals_full_logits_and_the_loop(grad, monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 2 * TINY_LLAMA["vocab_size"])
    model, batch = _model(), _batch()
    with torch.set_grad_enabled(grad):
        head = score_rows(model, batch, head=True, wpo=True)
        full = score_rows(model, batch, head=False, wpo=True)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert head.wpo is not None
    assert not head.wpo.requires_grad
    assert head.wpo.dtype == torch.float32
    assert head.logps.requires_grad == grad  # the log-probs keep their gradients
    torch.testing.assert_close(head.wpo, full.wpo, rtol=1e-5, atol=1e-5)
    labels = batch["labels"]
    want = [_naive_wpo(logits[i].double().tolist(), labels[i].tolist()) for i in range(labels.shape[0])]
    assert full.wpo.tolist() == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert score_rows(model, batch, head=True).wpo is None  # only when asked


@pytest.mark.parametrize("head", ["auto", "full"])
@pytest.mark.parametrize("reference", [NoReference(), FrozenReference()])
def test_pair_forward_returns_the_policys_wpo(head, reference):
    policy, batch = _model(), _batch(seed=1)
    other = _model()
    torch.nn.init.normal_(other.get_output_embeddings().weight, std=0.5)  # a reference that differs from the policy
    ref_model = other if reference.has_model else None
    pairs = PairForward(head)(ScoringModels(policy, ref_model, reference), batch, average=False, extras={"wpo"})
    assert {"wpo", "lengths"} <= pairs.extras
    with torch.no_grad():
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rows = sequence_wpo_logps(logits, batch["labels"])  # the policy's, never the reference's
    torch.testing.assert_close(pairs.policy_chosen_wpo, rows[:4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pairs.policy_rejected_wpo, rows[4:], rtol=1e-5, atol=1e-5)
    assert not pairs.policy_chosen_wpo.requires_grad
    assert pairs.policy_chosen_logps.requires_grad
    plain = PairForward(head)(ScoringModels(policy, ref_model, reference), batch, average=False)
    assert "wpo" not in plain.extras
