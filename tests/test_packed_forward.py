"""A packed batch gives the padded batch's numbers: per-pair values, the loss and every gradient, on every model."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from betadpo_lightning.core import chunked
from betadpo_lightning.data.collate import collate_preference_pairs
from betadpo_lightning.data.packed_views import unpack_to_padded
from betadpo_lightning.data.packing import pack_preference_pairs
from betadpo_lightning.losses import dpo_loss
from betadpo_lightning.models.building import apply_lora, disable_dropout
from betadpo_lightning.models.pair_forward import PairForward, ScoringModels
from betadpo_lightning.models.reference import AdapterReference, FrozenReference
from betadpo_lightning.models.reference_cache import _compute_share
from betadpo_lightning.models.scoring import perturbed_rows, score_rows
from betadpo_lightning.training.module import PreferenceModule
from betadpo_lightning.training.sft import SFTModule

VOCAB = 128
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
CONFIGS = {
    "llama": {"model_type": "llama", **SMALL, "num_key_value_heads": 2},
    "qwen2": {"model_type": "qwen2", **SMALL, "num_key_value_heads": 2},
    "qwen3": {"model_type": "qwen3", **SMALL, "num_key_value_heads": 2, "head_dim": 8, "tie_word_embeddings": True},
    "mistral": {"model_type": "mistral", **SMALL, "num_key_value_heads": 2},
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64},
    "gpt_neox": {"model_type": "gpt_neox", **SMALL, "max_position_embeddings": 64},
    # sliding windows shorter than the answers: one window on every layer, and a window on some layers only
    "mistral-window": {"model_type": "mistral", **SMALL, "num_key_value_heads": 2, "sliding_window": 3},
    "qwen2-window": {
        "model_type": "qwen2",
        **SMALL,
        "num_key_value_heads": 2,
        "use_sliding_window": True,
        "sliding_window": 3,
        "max_window_layers": 1,
    },
}
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    """Chunks of 3 rows, so that the head and the log-prob functions span many chunks."""
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 3 * VOCAB)


def _model(config: dict, attention: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(**config, vocab_size=VOCAB), attn_implementation=attention
    )
    disable_dropout(model)  # GPT-2 and GPT-NeoX configs have dropout: two passes must see the same function
    return model.train()


def _samples(count: int = 5, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def ids(low: int, high: int) -> list[int]:
        return torch.randint(3, VOCAB, (int(torch.randint(low, high, (1,), generator=g)),), generator=g).tolist()

    samples = [
        {"prompt_input_ids": ids(1, 8), "chosen_input_ids": ids(1, 9), "rejected_input_ids": ids(1, 9), "index": i}
        for i in range(count)
    ]
    samples[2]["prompt_input_ids"] = []  # an empty prompt: each answer's first token is predicted by nothing
    return samples


def _batches(max_row_tokens: int | None = 24) -> tuple[dict, dict]:
    samples = _samples()
    packed = pack_preference_pairs(samples, pad_token_id=0, max_row_tokens=max_row_tokens, pad_to_multiple_of=8)
    return packed, collate_preference_pairs(samples, pad_token_id=0)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _step(forward: PairForward, models: ScoringModels, batch: dict, average: bool = False):
    """Pairs with every extra, the DPO loss (with a WPO-like weight and a perturbed term) and the gradients."""
    models.policy.zero_grad(set_to_none=True)
    extras = frozenset({"reference_entropy", "perturbed_logps", "wpo"})
    pairs = forward(models, batch, average, extras, epsilon=0.1)
    loss = dpo_loss(
        pairs.policy_chosen_logps,
        pairs.policy_rejected_logps,
        pairs.reference_chosen_logps,
        pairs.reference_rejected_logps,
        beta=0.5,
    )
    loss = (loss * (1 + pairs.reference_chosen_entropy)).mean()
    loss.backward()
    return pairs, loss.detach(), _grads(models.policy)


def _assert_same(packed_step, padded_step) -> None:
    (pairs, loss, grads), (want_pairs, want_loss, want_grads) = packed_step, padded_step
    assert pairs.extras == want_pairs.extras
    for name, value in want_pairs.tensors().items():
        torch.testing.assert_close(getattr(pairs, name), value, **TOLERANCE, msg=name)
    torch.testing.assert_close(loss, want_loss, **TOLERANCE)
    assert grads.keys() == want_grads.keys()
    assert len(grads) > 0
    for name, grad in want_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_pairs_loss_and_gradients_equal_the_padded_batch(name, attention):
    policy, reference = _model(CONFIGS[name], attention), _model(CONFIGS[name], attention, seed=1).eval()
    models = ScoringModels(policy, reference, FrozenReference())
    packed, padded = _batches()
    forward = PairForward()
    assert forward.support.packing(policy, reference)  # packed for real, no fallback
    _assert_same(_step(forward, models, packed), _step(forward, models, padded))


@pytest.mark.parametrize("head", [True, False])
@pytest.mark.parametrize("average", [False, True])
def test_each_row_value_equals_the_padded_batch_on_both_paths(head, average):
    """score_rows and perturbed_rows directly: log-probs, entropy, WPO and ε-perturbed log-probs per row."""
    policy, reference = _model(CONFIGS["llama"]), _model(CONFIGS["llama"], seed=1).eval()
    packed, padded = _batches(max_row_tokens=None)  # one row
    values = {}
    for layout, batch in (("packed", packed), ("padded", padded)):
        with torch.no_grad():
            scores = score_rows(policy, batch, head, average, entropy=True, keep=True, wpo=True)
            ref = score_rows(reference, batch, head, average, entropy=True, keep=True)
        values[layout] = {
            "logps": scores.logps,
            "entropy": scores.entropy,
            "wpo": scores.wpo,
            "reference": ref.logps,
            "perturbed": torch.stack(perturbed_rows(scores, ref, batch, epsilon=0.2)),
        }
    for key, value in values["padded"].items():
        assert value.shape[-1] == 10
        torch.testing.assert_close(values["packed"][key], value, **TOLERANCE, msg=key)


def test_lora_adapters_and_the_adapter_reference():
    pytest.importorskip("peft")
    options = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}
    policy = apply_lora(_model(CONFIGS["llama"]), options)
    models = ScoringModels(policy, None, AdapterReference())
    packed, padded = _batches()
    forward = PairForward()
    packed_step, padded_step = _step(forward, models, packed), _step(forward, models, padded)
    assert all("lora_" in name for name in packed_step[2])  # only the adapters train
    _assert_same(packed_step, padded_step)


def test_full_logits_path_with_an_adapted_output_layer():
    """LoRA on the output layer rules the head out: the full logits, still packed."""
    pytest.importorskip("peft")
    options = {"r": 4, "target_modules": ["q_proj", "lm_head"], "init_lora_weights": False}
    policy = apply_lora(_model(CONFIGS["qwen2"]), options)
    models = ScoringModels(policy, None, AdapterReference())
    packed, padded = _batches()
    forward = PairForward()
    assert not forward.use_head(policy)
    assert forward.support.packing(policy)
    _assert_same(_step(forward, models, packed), _step(forward, models, padded))


def test_an_unsupported_model_falls_back_to_the_padded_batch_and_says_why_once(caplog):
    config = {"model_type": "olmo", **SMALL, "num_key_value_heads": 2}
    policy, reference = _model(config), _model(config, seed=1).eval()
    models = ScoringModels(policy, reference, FrozenReference())
    packed, padded = _batches()
    forward = PairForward()
    with caplog.at_level(logging.INFO):
        packed_step = _step(forward, models, packed)
        _step(forward, models, packed)
    reasons = [r.getMessage() for r in caplog.records if "padded batches for" in r.getMessage()]
    assert len(reasons) == 2  # once for the policy and once for the reference, not again at the second step
    assert all("'olmo' is not among those packing is verified on" in reason for reason in reasons)
    _assert_same(packed_step, _step(forward, models, padded))
    with pytest.raises(ValueError, match=r"cannot run a packed batch.*unpack_to_padded"):
        score_rows(policy, packed, head=False)


def test_packing_off_runs_the_padded_batch():
    policy = _model(CONFIGS["gpt2"])
    models = ScoringModels(policy, _model(CONFIGS["gpt2"], seed=1).eval(), FrozenReference())
    packed, padded = _batches()
    _assert_same(_step(PairForward(packing="off"), models, packed), _step(PairForward(), models, padded))
    assert torch.equal(unpack_to_padded(packed, 0)["labels"], padded["labels"])


@pytest.mark.slow
def test_flex_attention_block_mask_forward_on_cpu():
    """FlexAttention runs forward only on CPU (its backward needs a GPU); compiled on first use, hence slow."""
    model = _model(CONFIGS["llama"], "flex_attention").eval()
    packed, padded = _batches()
    with torch.no_grad():
        got = score_rows(model, packed, head=True, entropy=True)
        want = score_rows(_model(CONFIGS["llama"], "sdpa").eval(), padded, head=True, entropy=True)
    torch.testing.assert_close(got.logps, want.logps, **TOLERANCE)
    torch.testing.assert_close(got.entropy, want.entropy, **TOLERANCE)


def test_sft_loss_and_gradients_on_a_packed_batch():
    """SFT on a packed pair batch runs only its [prompt, chosen] segments and equals the padded batch."""
    module = SFTModule(model_config={**CONFIGS["gpt_neox"], "vocab_size": VOCAB})
    module.configure_model()
    disable_dropout(module.policy)
    samples = _samples()
    samples[3]["padding"] = True  # a repeated evaluation pair: left out of the sums
    results = []
    for batch in (
        pack_preference_pairs(samples, pad_token_id=0, max_row_tokens=20),
        collate_preference_pairs(samples, pad_token_id=0),
    ):
        module.policy.zero_grad(set_to_none=True)
        nll, tokens = module.response_nll(batch)
        (nll / tokens).backward()
        results.append((nll.detach(), tokens, _grads(module.policy)))
    (nll, tokens, grads), (want_nll, want_tokens, want_grads) = results
    assert int(tokens) == int(want_tokens) > 0
    torch.testing.assert_close(nll, want_nll, **TOLERANCE)
    for name, grad in want_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_reference_cache_share_from_packed_batches():
    """The precomputing pass gives the same values from packed batches as from padded ones."""
    model = _model(CONFIGS["qwen3"]).eval()
    trainer = SimpleNamespace(
        global_rank=0,
        world_size=1,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        precision_plugin=SimpleNamespace(forward_context=nullcontext),
    )
    shares = [
        _compute_share(
            model, SimpleNamespace(splits={"train": _samples(7)}, collate=collate), trainer, "train", 3, True, True
        )
        for collate in (lambda s: pack_preference_pairs(s, 0), lambda s: collate_preference_pairs(s, 0))
    ]
    assert torch.equal(shares[0]["rows"], shares[1]["rows"])
    for key in ("logps", "entropy"):
        assert shares[0][key].shape == (7, 2)
        torch.testing.assert_close(shares[0][key], shares[1][key], **TOLERANCE)


def test_preference_module_step_on_a_packed_batch():
    """The whole step (batch check, pairs, margins, β decision, loss) takes a packed batch: one packed forward each."""
    module = PreferenceModule(model_config={**CONFIGS["llama"], "vocab_size": VOCAB}, beta=0.3)
    module.configure_model()
    with torch.no_grad():  # make the policy differ from the reference
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    packed, padded = _batches()
    shapes = []
    module.policy.register_forward_hook(lambda m, a, k, o: shapes.append(k["input_ids"].shape), with_kwargs=True)
    losses = []
    for batch in (packed, padded):
        module.policy.zero_grad(set_to_none=True)
        loss = module._step(batch, "train")
        loss.backward()
        losses.append((loss.detach(), _grads(module.policy)))
    assert shapes == [packed["input_ids"].shape, padded["input_ids"].shape]
    torch.testing.assert_close(losses[0][0], losses[1][0], **TOLERANCE)
    for name, grad in losses[1][1].items():
        torch.testing.assert_close(losses[0][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
