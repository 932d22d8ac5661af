"""Reference providers: frozen copy, another checkpoint, adapters disabled (peft), precomputed, none.

Whatever the provider, the reference is never trained, never in the optimizer or the checkpoint, always in eval
mode, and a separate reference model follows device and dtype moves and precision plugins.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from transformers import AutoModelForCausalLM

from betadpo_lightning.callbacks import DynamicBetaCallback
from betadpo_lightning.core.controllers import ConstantBetaController
from betadpo_lightning.core.logps import sequence_entropy, sequence_logps
from betadpo_lightning.core.types import PairData, PairRequest
from betadpo_lightning.data.collate import collate_preference_pairs
from betadpo_lightning.models.reference import (
    AdapterReference,
    FrozenReference,
    NoReference,
    PrecomputedReference,
    ReferenceProvider,
)
from betadpo_lightning.training.module import PreferenceModule
from conftest import save_tiny_model
from helpers.recorder import Recorder, params_of
from helpers.tiny import TINY_LLAMA, RandomPairs, collate_pairs, resumable_loader
from helpers.trainers import quiet_trainer

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}


def _batch(n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    return collate_pairs([RandomPairs(8, seed=seed)[i] for i in range(n)])


def _sgd(params):
    return torch.optim.SGD(params, lr=0.5)


def _fit(tmp_path, module: PreferenceModule, steps: int = 2, **kwargs) -> tuple[pl.Trainer, Recorder]:
    recorder = Recorder()
    trainer = quiet_trainer(tmp_path, steps, [recorder], **kwargs)
    trainer.fit(module, resumable_loader(RandomPairs(16), 4))
    return trainer, recorder


def _model_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logps(logits, batch["labels"])


def test_another_checkpoint_as_reference(tmp_path, tiny_model_dir):
    other = save_tiny_model(tmp_path / "other", seed=7)
    module = PreferenceModule(
        model_name_or_path=str(tiny_model_dir), reference=FrozenReference(str(other)), optimizer=_sgd
    )
    _, recorder = _fit(tmp_path, module)
    expected = AutoModelForCausalLM.from_pretrained(str(other)).state_dict()
    for key, value in params_of(module.reference).items():
        assert torch.equal(value, expected[key]), key  # the other checkpoint, untouched by training
    assert recorder.losses[0] != pytest.approx(math.log(2), abs=1e-4)  # policy ≠ reference from step 0
    batch = _batch()
    pairs = module.forward_pairs(batch)
    want = _model_logps(AutoModelForCausalLM.from_pretrained(str(other)), batch)
    torch.testing.assert_close(torch.cat([pairs.reference_chosen_logps, pairs.reference_rejected_logps]), want)


def test_adapters_disabled_reference_is_the_base_model_without_a_copy(tmp_path, tiny_model_dir):
    pl.seed_everything(0)
    module = PreferenceModule(
        model_name_or_path=str(tiny_model_dir), lora=LORA, reference=AdapterReference(), optimizer=_sgd
    )
    trainer, recorder = _fit(tmp_path, module, steps=3)
    assert module.reference_model is None  # no second copy
    assert recorder.losses[0] == pytest.approx(math.log(2), abs=1e-6)  # LoRA starts as the identity
    trainable = {name for name, p in module.policy.named_parameters() if p.requires_grad}
    assert trainable
    assert all("lora_" in name for name in trainable)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.policy.parameters() if p.requires_grad}
    batch = _batch(seed=2)
    pairs = module.forward_pairs(batch)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    reference = torch.cat([pairs.reference_chosen_logps, pairs.reference_rejected_logps])
    torch.testing.assert_close(reference, _model_logps(base, batch))  # the base weights, adapters off
    policy = torch.cat([pairs.policy_chosen_logps, pairs.policy_rejected_logps]).detach()
    assert not torch.allclose(policy, reference)  # ... while the policy uses its trained adapters
    assert module.policy.training  # the reference pass restored the policy's mode
    state = trainer.lightning_module.state_dict()
    assert state
    assert all("lora_" in key or "base_layer" in key or "policy." in key for key in state)


def test_adapters_disabled_reference_needs_adapters(tiny_model_dir):
    module = PreferenceModule(model_name_or_path=str(tiny_model_dir), reference=AdapterReference())
    with pytest.raises(ValueError, match="AdapterReference needs a policy with LoRA adapters"):
        module.configure_model()


def test_precomputed_reference_gives_the_live_reference_loss(tmp_path):
    """Values precomputed with a frozen copy and carried in the batch give the same pairs as the live copy."""
    pl.seed_everything(0)
    live = PreferenceModule(model_config=TINY_LLAMA)
    live.configure_model()
    with torch.no_grad():
        for p in live.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    want = live.forward_pairs(batch)
    precomputed = PreferenceModule(model_config=TINY_LLAMA, reference=PrecomputedReference())
    precomputed.configure_model()
    precomputed.policy.load_state_dict(live.policy.state_dict())
    assert precomputed.reference_model is None
    batch["reference_logps"] = torch.cat([want.reference_chosen_logps, want.reference_rejected_logps])
    got = precomputed.forward_pairs(batch)
    for name, value in want.tensors().items():
        torch.testing.assert_close(got.tensors()[name], value, msg=name)
    averaged = PreferenceModule(model_config=TINY_LLAMA, reference=PrecomputedReference(), loss="ipo")
    averaged.configure_model()
    pairs = averaged.forward_pairs(batch)  # IPO averages: the summed precomputed values are divided by the lengths
    torch.testing.assert_close(pairs.reference_chosen_logps, want.reference_chosen_logps / want.chosen_lengths)
    del batch["reference_logps"]
    with pytest.raises(KeyError, match="the batch has no `reference_logps`"):
        precomputed.forward_pairs(batch)


def test_precomputed_values_travel_through_the_collate():
    samples = [
        RandomPairs(4)[i] | {"reference_chosen_logps": -1.0 - i, "reference_rejected_logps": -5.0 - i} for i in range(3)
    ]
    batch = collate_preference_pairs(samples, pad_token_id=0)
    assert batch["reference_logps"].tolist() == [-1.0, -2.0, -3.0, -5.0, -6.0, -7.0]  # (2B,), chosen rows first
    assert "reference_entropy" not in batch
    del samples[1]["reference_rejected_logps"]
    assert "reference_logps" not in collate_preference_pairs(samples, pad_token_id=0)  # only when every pair has them


def test_no_reference_gives_reference_free_margins(tmp_path):
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, reference=NoReference(), optimizer=_sgd)
    _fit(tmp_path, module)
    assert module.reference_model is None
    pairs = module.forward_pairs(_batch())
    assert torch.equal(pairs.reference_chosen_logps, torch.zeros(3))
    assert torch.equal(pairs.reference_rejected_logps, torch.zeros(3))


@pytest.mark.parametrize(
    "provider",
    [FrozenReference(), FrozenReference("some/dir"), AdapterReference(), PrecomputedReference(), NoReference()],
)
def test_provider_config_round_trip(provider):
    rebuilt = ReferenceProvider.from_config(provider.config())
    assert rebuilt == provider
    with pytest.raises(ValueError, match="ReferenceProvider"):
        ReferenceProvider.from_config({"class_path": "os.system", "init_args": {}})


def test_reference_follows_dtype_moves_and_precision_plugins(tmp_path):
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA)
    module.configure_model()
    module.to(torch.float64)
    assert {p.dtype for p in module.reference.parameters()} == {torch.float64}
    module.to(torch.float32)
    # A true-half precision plugin converts every submodule, the reference included.
    pl.seed_everything(0)
    half = PreferenceModule(model_config=TINY_LLAMA, optimizer=_sgd)
    trainer = quiet_trainer(tmp_path, 1, precision="bf16-true")
    trainer.fit(half, resumable_loader(RandomPairs(8), 4))
    assert {p.dtype for p in half.reference.parameters()} == {torch.bfloat16}
    assert not half.reference.training


def test_reference_stays_frozen_and_out_of_checkpoints_through_fit_validate_fit(tmp_path):
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=_sgd)
    val = torch.utils.data.DataLoader(RandomPairs(4, seed=1), batch_size=4, collate_fn=collate_pairs)
    trainer = quiet_trainer(tmp_path, 2, limit_val_batches=1, val_check_interval=1, num_sanity_val_steps=0)
    trainer.fit(module, resumable_loader(RandomPairs(8), 4), val)
    before = params_of(module.reference)
    trainer.validate(module, val, verbose=False)
    assert not module.reference.training
    module.train()
    assert module.policy.training
    assert not module.reference.training  # train() on the module never reaches the reference
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    state = torch.load(tmp_path / "c.ckpt", weights_only=True)["state_dict"]
    assert not [key for key in state if key.startswith("reference")]
    assert all(not p.requires_grad for p in module.reference.parameters())
    for key, value in params_of(module.reference).items():
        assert torch.equal(value, before[key])


class _RecordsEntropy(ConstantBetaController):
    """A controller that reads the reference's entropy (as MallowsPO-style methods do) and keeps what it saw."""

    request = PairRequest(frozenset({"reference_entropy"}))

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__(beta)
        self.seen: list[PairData] = []

    def step(self, gaps, pairs=None):
        self.seen.append(pairs)
        return super().step(gaps, pairs)


def test_a_controller_gets_the_reference_entropy_it_requires(tmp_path):
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=_sgd)
    controller = _RecordsEntropy()
    trainer = quiet_trainer(tmp_path, 1, [DynamicBetaCallback(controller)])
    data = resumable_loader(RandomPairs(4), 4)
    batch = next(iter(data))  # the loader's first batch again (same seed and epoch)
    trainer.fit(module, data)
    (pairs,) = controller.seen
    with torch.no_grad():  # the reference never changes, so its logits can be computed after the step
        logits = module.reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want = sequence_entropy(logits, batch["labels"])
    torch.testing.assert_close(torch.cat([pairs.reference_chosen_entropy, pairs.reference_rejected_entropy]), want)


def test_a_controller_needing_what_the_provider_lacks_is_refused_at_start(tmp_path):
    module = PreferenceModule(model_config=TINY_LLAMA, reference=NoReference())
    trainer = quiet_trainer(tmp_path, 1, [DynamicBetaCallback(_RecordsEntropy())])
    with pytest.raises(MisconfigurationException, match=r"_RecordsEntropy needs \['reference_entropy'\]"):
        trainer.fit(module, resumable_loader(RandomPairs(4), 4))
