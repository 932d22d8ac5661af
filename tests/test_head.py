"""The response-only head equals the full-logits computation, values and gradients, on every supported model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from betadpo_lightning.core import chunked
from betadpo_lightning.core.head import head_perturbed_logps, head_token_stats, linear_log_softmax
from betadpo_lightning.core.logps import gather_log_softmax, perturbed_sequence_logps, sequence_entropy, sequence_logps
from betadpo_lightning.models.building import disable_dropout
from betadpo_lightning.models.scoring import head_unsupported_reason, perturbed_rows, score_rows
from betadpo_lightning.training.module import PreferenceModule
from helpers.tiny import TINY_LLAMA, RandomPairs, collate_pairs

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
CONFIGS = {
    "llama": TINY_LLAMA,
    "llama-tied": {**TINY_LLAMA, "tie_word_embeddings": True},
    "mistral": {"model_type": "mistral", **SMALL, "num_key_value_heads": 2, "vocab_size": 48},
    "qwen2-tied": {
        "model_type": "qwen2",
        **SMALL,
        "num_key_value_heads": 2,
        "vocab_size": 48,
        "tie_word_embeddings": True,
    },
    "qwen3": {"model_type": "qwen3", **SMALL, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 48},
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 48, "n_positions": 64},
    "gpt_neox": {"model_type": "gpt_neox", **SMALL, "vocab_size": 48, "max_position_embeddings": 64},
}


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    """Chunks of 2 rows, so that every computation spans many chunks."""
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 2 * 48)


def _model(config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    disable_dropout(model)  # GPT-2 and GPT-NeoX configs have dropout: two passes must see the same function
    return model.train()


def _batch(seed: int = 0):
    return collate_pairs([RandomPairs(16, seed=seed)[i] for i in range(4)])


def test_linear_log_softmax_equals_the_full_log_softmax_with_gradients():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(7, 5, generator=g, requires_grad=True)
    weight = torch.randn(11, 5, generator=g, requires_grad=True)
    bias = torch.randn(11, generator=g, requires_grad=True)
    targets = torch.randint(0, 11, (7,), generator=g)
    upstream = torch.randn(7, generator=g)
    got = linear_log_softmax(hidden, weight, targets, bias)
    want = gather_log_softmax(hidden @ weight.T + bias, targets)
    torch.testing.assert_close(got, want)
    grads = torch.autograd.grad((got * upstream).sum(), (hidden, weight, bias))
    want_grads = torch.autograd.grad((want * upstream).sum(), (hidden, weight, bias))
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_linear_log_softmax_gradcheck_in_float64():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 6, (5,), generator=g)
    assert torch.autograd.gradcheck(lambda h, w: linear_log_softmax(h, w, targets), (hidden, weight))


def test_token_stats_and_perturbed_equal_the_full_logits_versions():
    g = torch.Generator().manual_seed(3)
    hp, wp = torch.randn(9, 4, generator=g), torch.randn(13, 4, generator=g)
    hr, wr = torch.randn(9, 6, generator=g), torch.randn(13, 6, generator=g)
    targets = torch.randint(0, 13, (9,), generator=g)
    logps, entropy = head_token_stats(hr, wr, targets, entropy=True)
    last = torch.zeros(1, 13)  # position 9 predicts nothing
    logits = torch.cat([hr @ wr.T, last])[None]  # (1, 10, 13): one row whose positions 0..8 predict labels 1..9
    labels = torch.cat([torch.tensor([-100]), targets])[None]  # (1, 10)
    torch.testing.assert_close(logps.sum(), sequence_logps(logits, labels)[0])
    torch.testing.assert_close(entropy.mean(), sequence_entropy(logits, labels)[0])
    plus, minus = head_perturbed_logps(hp, wp, hr, wr, targets, epsilon=0.3)
    policy_logits = torch.cat([hp @ wp.T, last])[None]
    want_plus, want_minus = perturbed_sequence_logps(policy_logits, logits, labels, epsilon=0.3)
    torch.testing.assert_close(plus.sum(), want_plus[0])
    torch.testing.assert_close(minus.sum(), want_minus[0])


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("average", [False, True])
def test_head_equals_full_logits_on_supported_models(name, average):
    """Log-probs, every parameter's gradient, the reference entropy and the perturbed log-probs agree."""
    model = _model(CONFIGS[name])
    assert head_unsupported_reason(model) is None
    batch = _batch()
    upstream = torch.randn(8, generator=torch.Generator().manual_seed(4))
    results = {}
    for head in (True, False):
        model.zero_grad()
        scores = score_rows(model, batch, head=head, average=average, keep=True)
        (scores.logps * upstream).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            stats = score_rows(model, batch, head=head, average=average, entropy=True, keep=True)
        results[head] = (scores.logps.detach(), grads, stats)
    (head_logps, head_grads, head_stats), (full_logps, full_grads, full_stats) = results[True], results[False]
    torch.testing.assert_close(head_logps, full_logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head_stats.logps, full_logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head_stats.entropy, full_stats.entropy, rtol=1e-5, atol=1e-6)
    for key, value in full_grads.items():
        torch.testing.assert_close(head_grads[key], value, rtol=1e-4, atol=1e-6, msg=key)
    reference = _model({**CONFIGS[name]})
    torch.nn.init.normal_(reference.get_output_embeddings().weight, std=0.5)
    with torch.no_grad():
        ref_head = score_rows(reference, batch, head=True, keep=True)
        ref_full = score_rows(reference, batch, head=False, keep=True)
    got = perturbed_rows(head_stats, ref_head, batch["labels"], epsilon=0.2)
    want = perturbed_rows(full_stats, ref_full, batch["labels"], epsilon=0.2)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_half_precision_models_give_float32_logps_close_to_the_full_path():
    model = _model(TINY_LLAMA).to(torch.bfloat16)
    batch = _batch(seed=1)
    with torch.no_grad():
        head = score_rows(model, batch, head=True).logps
        full = score_rows(model, batch, head=False).logps
    assert head.dtype == torch.float32
    torch.testing.assert_close(head, full, rtol=2e-2, atol=5e-2)


def test_autocast_bf16_on_cpu():
    model = _model(TINY_LLAMA)
    batch = _batch(seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head = score_rows(model, batch, head=True)
        full = score_rows(model, batch, head=False)
        head.logps.sum().backward()
    assert head.logps.dtype == torch.float32
    torch.testing.assert_close(head.logps, full.logps.detach(), rtol=2e-2, atol=5e-2)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"model_type": "gemma2", **SMALL, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 48}, "softcapping"),
        (
            {
                "model_type": "opt",
                "hidden_size": 32,
                "ffn_dim": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "vocab_size": 48,
                "word_embed_proj_dim": 32,
            },
            "not among",
        ),
    ],
)
def test_unsupported_models_fall_back_to_full_logits(config, reason, caplog):
    model = _model(config)
    assert reason in head_unsupported_reason(model)
    module = PreferenceModule(model_config=config)
    module.configure_model()
    batch = _batch()
    pairs = module.forward_pairs(batch)  # the full-logits path: same numbers as the naive computation
    with torch.no_grad():
        logits = module.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(pairs.policy_chosen_logps.detach(), sequence_logps(logits, batch["labels"])[:4])


def test_lora_on_the_output_layer_falls_back(tmp_path):
    module = PreferenceModule(model_config=TINY_LLAMA, lora={"r": 2, "target_modules": ["q_proj", "lm_head"]})
    module.configure_model()
    assert "not a plain linear layer" in head_unsupported_reason(module.policy)
    module_default = PreferenceModule(model_config=TINY_LLAMA, lora={"r": 2})
    module_default.configure_model()
    assert head_unsupported_reason(module_default.policy) is None  # all-linear LoRA leaves the output layer alone


def test_module_head_option_forces_full_logits():
    torch.manual_seed(0)
    auto = PreferenceModule(model_config=TINY_LLAMA)
    auto.configure_model()
    full = PreferenceModule(model_config=TINY_LLAMA, head="full")
    full.configure_model()
    full.load_state_dict(auto.state_dict())
    batch = _batch(seed=3)
    assert auto._pair_forward.use_head(auto.policy)
    assert not full._pair_forward.use_head(full.policy)
    torch.testing.assert_close(
        auto.forward_pairs(batch).policy_chosen_logps, full.forward_pairs(batch).policy_chosen_logps
    )
    with pytest.raises(ValueError, match="head"):
        PreferenceModule(model_config=TINY_LLAMA, head="sparse")
