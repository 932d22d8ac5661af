"""Memory options on CPU: bitsandbytes 8-bit and paged AdamW, a 4-/8-bit reference, a 4-bit policy under LoRA
(QLoRA), LoRA checkpoints that hold only the adapters, and the refusal of tensor parallelism."""

from __future__ import annotations

import math

import bitsandbytes as bnb
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from betadpo_lightning.models.reference import AdapterReference, FrozenReference
from betadpo_lightning.models.sharding import data_parallel_mesh
from betadpo_lightning.training.module import PreferenceModule
from conftest import save_tiny_model
from helpers.recorder import Recorder, params_of
from helpers.tiny import RandomPairs, collate_pairs, resumable_loader
from helpers.trainers import quiet_trainer

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
pytestmark = pytest.mark.filterwarnings("ignore:.*(Paged optimizers|MatMul8bitLt|inputs will be cast).*:UserWarning")


@pytest.fixture(scope="module")
def quant_model_dir(tmp_path_factory, bpe_tokenizer_dir):
    """A tiny Llama wide enough for bitsandbytes' 4-bit blocks on CPU (hidden 64)."""
    path = tmp_path_factory.mktemp("quant-llama")
    return save_tiny_model(path, bpe_tokenizer_dir, hidden_size=64, intermediate_size=128)


def _fit(tmp_path, module, steps: int = 2, **kwargs) -> tuple[pl.Trainer, Recorder]:
    recorder = Recorder()
    trainer = quiet_trainer(tmp_path, steps, [recorder], **kwargs)
    trainer.fit(module, resumable_loader(RandomPairs(16), 4))
    return trainer, recorder


@pytest.mark.parametrize("optimizer", [bnb.optim.AdamW8bit, bnb.optim.PagedAdamW])
def test_bitsandbytes_optimizers_train_the_policy(tmp_path, tiny_model_dir, optimizer):
    module = PreferenceModule(model_name_or_path=str(tiny_model_dir), optimizer=lambda p: optimizer(p, lr=1e-2))
    module.configure_model()
    before = params_of(module.policy)
    trainer, recorder = _fit(tmp_path, module)
    assert isinstance(trainer.optimizers[0], optimizer)
    assert all(math.isfinite(loss) for loss in recorder.losses)
    assert any(not torch.equal(value, before[key]) for key, value in params_of(module.policy).items())


@pytest.mark.parametrize(("quantization", "layer"), [("4bit", bnb.nn.Linear4bit), ("8bit", bnb.nn.Linear8bitLt)])
def test_quantised_reference(tmp_path, quant_model_dir, quantization, layer):
    module = PreferenceModule(
        model_name_or_path=str(quant_model_dir),
        reference=FrozenReference(quantization=quantization),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
    )
    trainer, recorder = _fit(tmp_path, module, steps=3)
    assert isinstance(module.reference.model.layers[0].mlp.up_proj, layer)
    assert type(module.reference.lm_head) is torch.nn.Linear  # the output layer stays exact
    assert not isinstance(module.policy.model.layers[0].mlp.up_proj, layer)
    assert all(math.isfinite(loss) for loss in recorder.losses)
    # The quantised reference is close to the exact one: the step-0 loss is near log 2.
    assert recorder.losses[0] == pytest.approx(math.log(2), abs=0.05)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    state = torch.load(tmp_path / "c.ckpt", weights_only=True)["state_dict"]
    assert not [key for key in state if key.startswith("reference")]


def test_quantised_copy_of_a_config_policy_is_refused():
    from helpers.tiny import TINY_LLAMA

    module = PreferenceModule(model_config=TINY_LLAMA, reference=FrozenReference(quantization="4bit"))
    with pytest.raises(ValueError, match="quantised FrozenReference is loaded from a checkpoint"):
        module.configure_model()
    with pytest.raises(ValueError, match="quantization"):
        FrozenReference(quantization="3bit")


def test_qlora_policy_trains_its_adapters_on_a_4bit_base(tmp_path, quant_model_dir):
    module = PreferenceModule(
        model_name_or_path=str(quant_model_dir),
        lora=LORA,
        quantization="4bit",
        reference=AdapterReference(),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
    )
    _, recorder = _fit(tmp_path, module, steps=4)
    base = module.policy.get_base_model()
    assert isinstance(base.model.layers[0].mlp.up_proj.base_layer, bnb.nn.Linear4bit)
    trainable = [name for name, p in module.policy.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in name for name in trainable)
    assert recorder.losses[0] == pytest.approx(math.log(2), abs=1e-5)  # adapters start as the identity
    lora_b = [p for name, p in module.policy.named_parameters() if "lora_B" in name]
    assert lora_b
    assert all(bool(p.abs().sum() > 0) for p in lora_b)  # initialised at zero, moved by training
    with pytest.raises(ValueError, match="LoRA adapters on a base loaded from a checkpoint"):
        PreferenceModule(model_name_or_path=str(quant_model_dir), quantization="4bit")


def test_lora_checkpoints_hold_only_the_adapters_and_resume(tmp_path, tiny_model_dir):
    pl.seed_everything(0)

    def module():
        return PreferenceModule(
            model_name_or_path=str(tiny_model_dir),
            lora=LORA,
            reference=AdapterReference(),
            optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        )

    trained = module()
    trainer, _ = _fit(tmp_path, trained, steps=2)
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    state = torch.load(tmp_path / "lora.ckpt", weights_only=True)["state_dict"]
    assert state
    assert all("lora_" in key for key in state), [k for k in state if "lora_" not in k][:3]
    loaded = PreferenceModule.load_from_checkpoint(tmp_path / "lora.ckpt")
    batch = collate_pairs([RandomPairs(4)[i] for i in range(2)])
    torch.testing.assert_close(
        loaded.forward_pairs(batch).policy_chosen_logps, trained.forward_pairs(batch).policy_chosen_logps
    )
    resumed = module()
    trainer2 = quiet_trainer(tmp_path / "r", 4)
    trainer2.fit(resumed, resumable_loader(RandomPairs(16), 4), ckpt_path=tmp_path / "lora.ckpt")
    assert trainer2.global_step == 4


def test_tensor_parallelism_is_refused():
    class Mesh:
        def __init__(self, sizes):
            self.sizes = sizes

        def __getitem__(self, name):
            size = self.sizes[name]
            return type("Dim", (), {"size": lambda self: size})()

    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)
    with pytest.raises(MisconfigurationException, match="tensor_parallel_size=2"):
        data_parallel_mesh(strategy, Mesh({"tensor_parallel": 2, "data_parallel": 1}))
    assert data_parallel_mesh(object(), None) is None
