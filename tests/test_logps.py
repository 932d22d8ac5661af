"""sequence_logps against a hand-built case, a float64 re-implementation and autograd of the naive formula."""

from __future__ import annotations

import math

import pytest
import torch

from betadpo_lightning.core import chunked as chunked_module
from betadpo_lightning.core.logps import gather_log_softmax, sequence_entropy, sequence_logps
from helpers import reference_impls as ref


def test_hand_built_1x3x4():
    """Row of 3 positions over 4 tokens, labels [-100, 3, 0].

    Position 0 has logits [0, 0, 0, 0] (uniform) and predicts labels[1] = 3: log(1/4).
    Position 1 has logits [ln 2, 0, 0, 0] ⇒ softmax [2/5, 1/5, 1/5, 1/5], predicts labels[2] = 0: log(2/5).
    Position 2 predicts nothing (the shift drops it), so its logits (here 100s) must not matter.
    Sum = log(1/4) + log(2/5) = log(1/10); average over the 2 counted tokens = log(1/10) / 2.
    """
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0, 0.0], [100.0, 100.0, -100.0, 0.0]]])
    labels = torch.tensor([[-100, 3, 0]])
    torch.testing.assert_close(sequence_logps(logits, labels), torch.tensor([math.log(0.1)]))
    torch.testing.assert_close(sequence_logps(logits, labels, average=True), torch.tensor([math.log(0.1) / 2]))


def _random_case(n: int, t: int, v: int, dtype: torch.dtype, seed: int, ignore: int = -100):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, t, v, generator=g, dtype=torch.float64) * 4).to(dtype)
    labels = torch.randint(0, v, (n, t), generator=g)
    prompt_len = torch.randint(0, t - 1, (n,), generator=g)
    positions = torch.arange(t)[None, :]
    labels[positions <= prompt_len[:, None]] = ignore  # prompt (and the first token) never counts
    labels[1, -2:] = ignore  # right padding on one row
    return logits, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("average", [False, True])
def test_against_float64_reference(dtype, average):
    logits, labels = _random_case(4, 9, 11, dtype, seed=1)
    got = sequence_logps(logits, labels, average=average)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want = [
        ref.sequence_logp(logits[i].double().tolist(), labels[i].tolist(), ignore=-100, average=average)
        for i in range(4)
    ]
    # The reference uses the very values the library saw; float32 accumulation is the only difference.
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), **tol)


def test_half_precision_is_normalised_in_float32():
    """A log-softmax done in bf16 is visibly off; ours matches the float32 computation on the same bf16 values."""
    logits, labels = _random_case(2, 16, 512, torch.bfloat16, seed=2)
    ours = sequence_logps(logits, labels)
    f32 = sequence_logps(logits.float(), labels)
    torch.testing.assert_close(ours, f32, rtol=0, atol=0)
    naive_bf16 = torch.log_softmax(logits, -1)[:, :-1].gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1)
    naive_bf16 = (naive_bf16 * (labels[:, 1:] != -100)).sum(-1).float()
    assert (naive_bf16 - f32).abs().max() > 1e-3 * f32.abs().max()


def test_gradcheck_float64():
    logits, labels = _random_case(3, 6, 5, torch.float64, seed=3)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sequence_logps(x, labels), (logits,))
    assert torch.autograd.gradcheck(lambda x: sequence_logps(x, labels, average=True), (logits,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_matches_naive_autograd(dtype):
    logits, labels = _random_case(3, 7, 13, dtype, seed=4)
    ours_in = logits.clone().requires_grad_()
    sequence_logps(ours_in, labels).sum().backward()
    naive_in = logits.float().clone().requires_grad_()
    mask = labels[:, 1:] != -100
    tok = torch.log_softmax(naive_in[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1)
    (tok * mask).sum().backward()
    assert ours_in.grad.dtype == dtype
    tol = {} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(ours_in.grad.float(), naive_in.grad, **tol)


def test_chunking_changes_nothing(monkeypatch):
    logits, labels = _random_case(3, 10, 7, torch.float32, seed=5)
    whole_in = logits.clone().requires_grad_()
    whole = sequence_logps(whole_in, labels)
    whole.sum().backward()
    monkeypatch.setattr(chunked_module, "CHUNK_ELEMENTS", 7 * 2)  # two rows per chunk
    chunked_in = logits.clone().requires_grad_()
    chunked = sequence_logps(chunked_in, labels)
    chunked.sum().backward()
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)
    torch.testing.assert_close(chunked_in.grad, whole_in.grad, rtol=0, atol=0)


def test_custom_ignore_index_and_empty_row():
    logits, labels = _random_case(2, 5, 6, torch.float32, seed=6, ignore=7)
    labels[0] = 7  # a row with no response token at all
    got = sequence_logps(logits, labels, ignore_index=7, average=True)
    assert got[0] == 0
    want = ref.sequence_logp(logits[1].double().tolist(), labels[1].tolist(), ignore=7, average=True)
    assert got[1].item() == pytest.approx(want, rel=1e-5)


def test_shift_is_internal():
    """Moving a label one position changes which logits row scores it."""
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = 5.0  # position 0 strongly predicts token 2
    at_1 = sequence_logps(logits, torch.tensor([[-100, 2, -100]]))
    at_2 = sequence_logps(logits, torch.tensor([[-100, -100, 2]]))
    assert at_1.item() > -0.1  # log p(2) at position 0 ≈ log(e^5 / (e^5 + 3)) ≈ -0.02
    assert at_2.item() == pytest.approx(math.log(0.25))  # position 1 is uniform


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"\(N, T, V\)"):
        sequence_logps(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        sequence_logps(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(M, V\)"):
        gather_log_softmax(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


def test_sequence_entropy_hand_computed():
    """V = 4. Uniform logits: H = log 4, normalised 1. Logits (L, 0, 0, 0) with L → ∞: H → 0. Logits (0, 0, -inf,
    -inf): two equal tokens, H = log 2, normalised log 2 / log 4 = 1/2. Row [-100, 1, 2, -100]: positions 0 and 1
    predict response tokens, position 2 predicts padding and does not count."""
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, float("-inf"), float("-inf")], [50.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]]]
    )
    labels = torch.tensor([[-100, 1, 2, -100]])
    assert sequence_entropy(logits, labels).item() == pytest.approx((1.0 + 0.5) / 2, abs=1e-6)
    assert sequence_entropy(logits[:, 2:], torch.tensor([[-100, 3]])).item() == pytest.approx(0.0, abs=1e-12)
    assert sequence_entropy(logits, torch.full((1, 4), -100)).item() == 0.0  # no response token


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_sequence_entropy_against_float64_reference(dtype):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(3, 7, 11, generator=g) * 3).to(dtype)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, :3] = -100
    labels[1, 5:] = -100
    labels[2, :] = -100
    labels[2, 4] = 5
    got = sequence_entropy(logits, labels)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want = [ref.normalised_entropy(logits[i].double().tolist(), labels[i].tolist(), -100) for i in range(3)]
    assert got.tolist() == pytest.approx(want, rel=1e-5, abs=1e-6)
