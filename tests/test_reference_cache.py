"""The precomputed reference: computed once into a cache keyed by what it depends on, refused when stale, equal to
the live reference, and shared between ranks."""

from __future__ import annotations

import json
import sys

import lightning.pytorch as pl
import pytest
import torch

from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.data.synthetic import SyntheticConfig
from betadpo_lightning.models import reference_cache
from betadpo_lightning.models.reference import FrozenReference, PrecomputedReference
from betadpo_lightning.models.reference_cache import COLUMNS, StaleCacheError
from betadpo_lightning.training.module import PreferenceModule
from conftest import save_tiny_model
from helpers.recorder import Recorder
from helpers.trainers import quiet_trainer

CONFIG = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
CONFIG |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}


def _data(tmp_path, **overrides) -> PreferenceDataModule:
    settings = {"synthetic": SyntheticConfig(train_size=24, validation_size=8), "batch_size": 4, "max_length": 32}
    return PreferenceDataModule(cache_dir=str(tmp_path / "data"), **{**settings, **overrides})


def _fit(
    tmp_path, reference, steps: int = 3, data=None, **trainer_kwargs
) -> tuple[PreferenceModule, Recorder, pl.Trainer]:
    pl.seed_everything(0)
    module = PreferenceModule(
        model_config=CONFIG, reference=reference, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2)
    )
    recorder = Recorder()
    settings = {"limit_val_batches": 1, "val_check_interval": steps, **trainer_kwargs}
    trainer = quiet_trainer(tmp_path, steps, [recorder], **settings)
    trainer.fit(module, datamodule=data or _data(tmp_path))
    return module, recorder, trainer


def test_precomputed_run_equals_the_live_reference_run(tmp_path):
    """Same seed, same data: the losses with a cache of the initial policy equal those with a frozen copy of it,
    and the precomputed run holds no reference model."""
    _, live_record, _ = _fit(tmp_path / "live", FrozenReference())
    cached, cached_record, trainer = _fit(tmp_path / "cached", PrecomputedReference(cache_dir=str(tmp_path / "c")))
    assert cached.reference_model is None
    assert cached_record.losses[0] == pytest.approx(0.6931, abs=1e-4)  # initial policy == reference
    assert cached_record.losses == pytest.approx(live_record.losses, rel=1e-5, abs=1e-6)
    assert trainer.callback_metrics["val/loss"].item() == pytest.approx(0.6931, abs=0.05)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert set(meta["key"]) == {"reference", "tokenizer", "data", "truncation", "precision"}
    assert sorted(p.name for p in (tmp_path / "c").glob("*.pt")) == ["train-0-of-1.pt", "validation-0-of-1.pt"]
    assert set(COLUMNS[:2]) <= set(trainer.datamodule.splits["train"].column_names)


def test_a_second_run_reads_the_cache(tmp_path, monkeypatch):
    cache = str(tmp_path / "c")
    _fit(tmp_path / "first", PrecomputedReference(cache_dir=cache), steps=1)
    computed = []
    original = reference_cache._compute_share
    monkeypatch.setattr(reference_cache, "_compute_share", lambda *a, **k: computed.append(1) or original(*a, **k))
    _, recorder, _ = _fit(tmp_path / "second", PrecomputedReference(cache_dir=cache), steps=2)
    assert computed == []
    assert recorder.losses[0] == pytest.approx(0.6931, abs=1e-4)


def test_a_stale_cache_is_refused_naming_what_changed(tmp_path):
    cache = str(tmp_path / "c")
    _fit(tmp_path / "first", PrecomputedReference(cache_dir=cache), steps=1)
    with pytest.raises(StaleCacheError, match=r"another truncation \(truncation.max_length: 32 in the cache, 24 now\)"):
        _fit(tmp_path / "b", PrecomputedReference(cache_dir=cache), steps=1, data=_data(tmp_path, max_length=24))
    other = save_tiny_model(tmp_path / "other", seed=3, vocab_size=64, num_hidden_layers=1)
    with pytest.raises(StaleCacheError, match=r"another reference \(reference.fingerprint"):
        _fit(tmp_path / "c2", PrecomputedReference(name_or_path=str(other), cache_dir=cache), steps=1)
    with pytest.raises(StaleCacheError, match="another precision"):
        _fit(tmp_path / "d", PrecomputedReference(cache_dir=cache), steps=1, precision="bf16-mixed")
    pl.seed_everything(1)  # another random initial policy: another reference
    module = PreferenceModule(model_config=CONFIG, reference=PrecomputedReference(cache_dir=cache))
    with pytest.raises(StaleCacheError, match="another reference"):
        quiet_trainer(tmp_path / "e", 1).fit(module, datamodule=_data(tmp_path))


def test_another_checkpoint_as_precomputed_reference(tmp_path):
    other = save_tiny_model(tmp_path / "other", seed=3, vocab_size=64, num_hidden_layers=1)
    cached, _, trainer = _fit(
        tmp_path / "a", PrecomputedReference(name_or_path=str(other), cache_dir=str(tmp_path / "c"))
    )
    assert cached.reference_model is None
    live, _, _ = _fit(tmp_path / "b", FrozenReference(str(other)), steps=1)
    data = trainer.datamodule
    batch = data.collate([data.splits["train"][i] for i in range(4)])
    want = live.forward_pairs(batch)
    torch.testing.assert_close(
        batch["reference_logps"], torch.cat([want.reference_chosen_logps, want.reference_rejected_logps])
    )


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups in spawned processes")
def test_two_ranks_compute_shares_and_read_the_whole_cache(tmp_path):
    pl.seed_everything(0)
    cache = tmp_path / "c"
    module = PreferenceModule(model_config=CONFIG, reference=PrecomputedReference(cache_dir=str(cache)))
    trainer = quiet_trainer(tmp_path / "ddp", 1, devices=2, strategy="ddp_spawn", limit_val_batches=0)
    trainer.fit(module, datamodule=_data(tmp_path))
    assert sorted(p.name for p in cache.glob("train-*.pt")) == ["train-0-of-2.pt", "train-1-of-2.pt"]
    # One process reads the two-rank cache (its key matches) and gets the single-process values.
    _, _, single = _fit(tmp_path / "one", PrecomputedReference(cache_dir=str(tmp_path / "single")), steps=1)
    _, _, shared = _fit(tmp_path / "two", PrecomputedReference(cache_dir=str(cache)), steps=1)
    for column in COLUMNS[:2]:
        a = torch.tensor(single.datamodule.splits["train"][column])
        b = torch.tensor(shared.datamodule.splits["train"][column])
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_cache_stores_the_entropy_mallowspo_needs(tmp_path):
    """MallowsPO reads the reference's entropy: the precomputed cache holds it, and training on it gives the losses
    of the live reference."""

    def fit(directory, reference):
        pl.seed_everything(0)
        module = PreferenceModule(
            model_config=CONFIG,
            reference=reference,
            loss="mallows_theta",
            optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        )
        recorder = Recorder()
        trainer = quiet_trainer(directory, 3, [recorder], limit_val_batches=0)
        trainer.fit(module, datamodule=_data(tmp_path))
        return recorder, trainer

    live, _ = fit(tmp_path / "live", FrozenReference())
    cached, trainer = fit(tmp_path / "cached", PrecomputedReference(cache_dir=str(tmp_path / "c")))
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["entropy"] is True
    assert set(COLUMNS) <= set(trainer.datamodule.splits["train"].column_names)
    assert cached.losses == pytest.approx(live.losses, rel=1e-5, abs=1e-6)
