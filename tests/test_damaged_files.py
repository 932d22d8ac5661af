"""Damaged files are refused, naming the file, before anything uses them: checkpoints given to ``ckpt_path``
(truncated, random bytes, not Lightning's, NaN or flipped bytes in the optimizer state) and the reference cache
(a truncated part, a cut meta.json, values scaled or chosen/rejected swapped). On the command line: one short line."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from betadpo_lightning.callbacks import PreferenceCheckpoint
from betadpo_lightning.commands.cli import main
from betadpo_lightning.commands.cli_errors import explain
from betadpo_lightning.data import PreferenceDataModule
from betadpo_lightning.data.synthetic import SyntheticConfig
from betadpo_lightning.models.cache_integrity import DamagedCacheError
from betadpo_lightning.models.policy_checkpoint import CheckpointError
from betadpo_lightning.models.reference import PrecomputedReference
from betadpo_lightning.training.module import PreferenceModule
from helpers.tiny import TINY_LLAMA, RandomPairsData
from helpers.trainers import quiet_trainer

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

ROOT = Path(__file__).parents[1]


def _fit(folder: Path, steps: int, ckpt_path: str | None = None) -> PreferenceModule:
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    checkpoint = PreferenceCheckpoint(dirpath=str(folder))
    trainer = quiet_trainer(folder, steps, [checkpoint], enable_checkpointing=True, limit_val_batches=0)
    trainer.fit(module, datamodule=RandomPairsData(size=8, batch_size=4), ckpt_path=ckpt_path)
    return module


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    _fit(folder, 2)
    return folder / "last.ckpt"


def _optimizer_bytes(checkpoint: Path) -> tuple[bytes, int]:
    """The file's bytes and the offset of the largest ``exp_avg_sq`` tensor's data in it."""
    data = checkpoint.read_bytes()
    state = torch.load(checkpoint, weights_only=False)["optimizer_states"][0]["state"]
    tensor = max((entry["exp_avg_sq"] for entry in state.values()), key=lambda t: t.numel())
    offset = data.find(tensor.numpy().tobytes())
    assert offset > 0
    return data, offset


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _nan_in_optimizer(data: bytes, offset: int) -> bytes:
    return data[:offset] + b"\xff" * 64 + data[offset + 64 :]  # 0xffffffff is a float32 NaN


def _flipped_in_optimizer(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes(b ^ 0x5A for b in data[offset : offset + 64]) + data[offset + 64 :]  # finite


DAMAGES = {
    "truncated": (lambda data, _: _truncated(data), "is not a complete file written by torch.save"),
    "random bytes": (lambda data, _: torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes(), "is not"),
    "NaN in the optimizer state": (_nan_in_optimizer, "is damaged: optimizer_states[0].state."),
    "flipped bytes in the optimizer state": (_flipped_in_optimizer, "does not match its checksum"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path, good_checkpoint, damage):
    make, expected = DAMAGES[damage]
    data, offset = _optimizer_bytes(good_checkpoint)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(make(data, offset))
    with pytest.raises(CheckpointError) as refused:
        _fit(tmp_path / "run", 4, ckpt_path=str(bad))
    message = str(refused.value)
    assert message.startswith(str(bad))
    assert expected in message
    assert "\n" not in message
    if damage == "NaN in the optimizer state":
        assert message.endswith(".exp_avg_sq holds NaN or infinite values; resume from another checkpoint")


def test_a_dictionary_that_is_not_a_lightning_checkpoint_is_named(tmp_path):
    foreign = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    with pytest.raises(CheckpointError, match=r"weights.ckpt is not a Lightning checkpoint \(it has no"):
        _fit(tmp_path / "run", 4, ckpt_path=str(foreign))


def test_a_good_checkpoint_still_resumes(tmp_path, good_checkpoint):
    shutil.copy(good_checkpoint, tmp_path / "last.ckpt")
    _fit(tmp_path, 3, ckpt_path=str(tmp_path / "last.ckpt"))
    assert int(torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"]) == 3


def test_a_truncated_last_ckpt_is_one_short_line_on_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), f"--trainer.default_root_dir={run}"]
    args += [f"--data.cache_dir={tmp_path / 'cache'}", "--data.synthetic.train_size=16"]
    args += ["--data.synthetic.validation_size=4", "--trainer.enable_progress_bar=false"]
    args += ["--trainer.enable_model_summary=false", "--trainer.max_steps=2", "--trainer.limit_val_batches=0"]
    main(args)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(_truncated(last.read_bytes()))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--trainer.max_steps=4", "--ckpt_path=last"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {last} is not a checkpoint: last.ckpt is not a complete file written by torch.save (truncated, "
        "damaged or another format)"
    ]


# --- the reference cache --------------------------------------------------------------------------------------------

CONFIG = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
CONFIG |= {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}


def _fit_cached(folder: Path, cache: Path) -> None:
    pl.seed_everything(0)
    module = PreferenceModule(model_config=CONFIG, reference=PrecomputedReference(cache_dir=str(cache)))
    data = PreferenceDataModule(
        cache_dir=str(folder.parent / "data"),
        synthetic=SyntheticConfig(train_size=24, validation_size=8),
        batch_size=4,
        max_length=32,
    )
    quiet_trainer(folder, 1, limit_val_batches=0).fit(module, datamodule=data)


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cached")
    _fit_cached(folder / "run", folder / "cache")
    return folder / "cache"


def _edit_part(transform):
    def edit(cache: Path) -> None:
        part = cache / "train-0-of-1.pt"
        values = torch.load(part, weights_only=True)
        torch.save({**values, "logps": transform(values["logps"])}, part)

    return edit


def _cut(name: str):
    def cut(cache: Path) -> None:
        data = (cache / name).read_bytes()
        (cache / name).write_bytes(data[: len(data) // 2])

    return cut


CACHE_DAMAGES = {
    "truncated part": (_cut("train-0-of-1.pt"), "train-0-of-1.pt cannot be read ("),
    "cut meta.json": (_cut("meta.json"), "meta.json is damaged (not valid JSON: "),
    "values scaled by 1.5": (_edit_part(lambda logps: logps * 1.5), "train-0-of-1.pt does not match its checksum"),
    "chosen and rejected swapped": (_edit_part(lambda logps: logps.flip(1)), "train-0-of-1.pt does not match its"),
    "missing part": (lambda cache: (cache / "validation-0-of-1.pt").unlink(), "validation-0-of-1.pt is missing"),
}


@pytest.mark.parametrize("damage", sorted(CACHE_DAMAGES))
def test_a_damaged_reference_cache_is_refused_naming_the_file(tmp_path, good_cache, damage):
    make, expected = CACHE_DAMAGES[damage]
    cache = tmp_path / "cache"
    shutil.copytree(good_cache, cache)
    make(cache)
    with pytest.raises(DamagedCacheError) as refused:
        _fit_cached(tmp_path / "run", cache)
    message = str(refused.value)
    assert expected in message
    assert message.endswith(f"; delete the folder {cache} to compute the cache again.")
    explained = explain(refused.value)
    assert explained is not None
    assert explained.message == message
    assert explained.hints == ()


def test_the_cache_records_a_checksum_of_every_part(good_cache):
    meta = json.loads((good_cache / "meta.json").read_text())
    parts = sorted(path.name for path in good_cache.glob("*.pt"))
    assert sorted(meta["checksums"]) == parts == ["train-0-of-1.pt", "validation-0-of-1.pt"]
    assert sorted(path.name for path in good_cache.iterdir()) == ["meta.json", *parts]  # no temporary file left
