"""QLoRA computes the adapters' true gradients, on CPU and on CUDA, also after an evaluation in eval mode.

The reference is the same network in float32 with the dequantised 4-bit weights (the weights the 4-bit layers
multiply with), so the gradients agree to float32 rounding; the 8-bit base is compared with the original float
weights, within its quantisation error. On CPUs with AVX512-BF16, bitsandbytes repacked a 4-bit layer for a kernel
without backward at the first eval-mode forward: Llama's adapters then got wrong gradients and Qwen2 failed.
"""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.functional import dequantize_4bit
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from betadpo_lightning.models.building import apply_lora
from betadpo_lightning.models.reference import AdapterReference
from betadpo_lightning.training.module import PreferenceModule
from conftest import save_tiny_model
from helpers.tiny import RandomPairs, collate_pairs
from helpers.trainers import quiet_trainer

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
pytestmark = pytest.mark.filterwarnings("ignore:.*(MatMul8bitLt|inputs will be cast).*:UserWarning")


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request, tmp_path_factory, bpe_tokenizer_dir):
    """A tiny model wide enough for bitsandbytes' 4-bit blocks (hidden 64); Qwen2 has biases on q, k and v."""
    path = tmp_path_factory.mktemp(f"quant-{request.param}")
    return save_tiny_model(
        path, bpe_tokenizer_dir, model_type=request.param, hidden_size=64, intermediate_size=128, seed=3
    )


def _float_twin(model_dir, policy, quantization: str) -> torch.nn.Module:
    """The policy in float32: the checkpoint's weights (for 4-bit: the dequantised ones), the same adapters."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if quantization == "4bit":
        layers = dict(model.named_modules())
        for name, module in policy.get_base_model().named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                weight = dequantize_4bit(module.weight.data, module.weight.quant_state)
                layers[name.removesuffix(".base_layer")].weight.data = weight.float().cpu()
    twin = apply_lora(model, LORA)
    adapters = {name: p.detach().float().cpu() for name, p in policy.named_parameters() if "lora_" in name}
    assert not twin.load_state_dict(adapters, strict=False).unexpected_keys
    return twin


def _lora_grads(model: torch.nn.Module, ids: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits.float()  # (N, T, V)
    (logits * weights).sum().backward()
    return {name: p.grad.detach().float().cpu() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_adapter_gradients_after_an_evaluation(tmp_path, model_dir, quantization, device):
    module = PreferenceModule(
        model_name_or_path=str(model_dir), lora=LORA, quantization=quantization, reference=AdapterReference()
    )
    module.configure_model()
    policy = module.policy
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at 0, which would leave every A without gradient
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    if device == "cuda":
        module.to(device)
    accelerator = "gpu" if device == "cuda" else "cpu"
    loader = DataLoader(RandomPairs(8, vocab=64), batch_size=4, collate_fn=collate_pairs)
    quiet_trainer(tmp_path, 1, accelerator=accelerator).validate(module, loader)  # eval mode, no gradient
    if quantization == "4bit":
        assert not any(
            getattr(m.weight.quant_state, "packing_format_for_cpu", False)
            for m in policy.modules()
            if isinstance(m, bnb.nn.Linear4bit)
        )
    ids = torch.randint(3, 64, (2, 12), generator=generator)
    weights = torch.randn(2, 12, policy.get_output_embeddings().weight.shape[0], generator=generator)
    got = _lora_grads(policy, ids.to(device), weights.to(device))
    expected = _lora_grads(_float_twin(model_dir, policy, quantization), ids, weights)
    assert sorted(got) == sorted(expected)
    assert len(got) == 2 * 7 * 2  # A and B of 7 linear layers in 2 blocks
    for name, grad in got.items():
        reference = expected[name]
        assert bool(reference.abs().sum() > 0), name
        error = float((grad - reference).norm() / reference.norm())
        assert error < (1e-4 if quantization == "4bit" else 0.05), (name, error)
