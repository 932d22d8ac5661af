"""``PreferenceCheckpoint(keep_last=K)``: only the newest K step checkpoints stay, each older one deleted after the
new one is written; ``last.ckpt`` and a monitored best are never deleted; the choice survives a resume and is
selectable in YAML."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins.io import TorchCheckpointIO

from betadpo_lightning.callbacks import PreferenceCheckpoint

ROOT = Path(__file__).parents[1]


class _RecordingIO(TorchCheckpointIO):
    """Records the order of writes and deletions (file names)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        super().save_checkpoint(checkpoint, path, storage_options)
        self.events.append(("save", Path(path).name))

    def remove_checkpoint(self, path):
        assert Path(path).exists()
        super().remove_checkpoint(path)
        self.events.append(("remove", Path(path).name))


class _Scored(BoringModel):
    """Logs ``score`` after each validation: the values of ``scores`` in turn (the best, lowest, comes early)."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = scores
        self.validations = 0

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.log("score", self.scores[self.validations])
            self.validations += 1


def _fit(root: Path, callback: PreferenceCheckpoint, max_steps: int, model=None, ckpt_path=None, io=None, **kwargs):
    trainer = pl.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        max_steps=max_steps,
        callbacks=[callback],
        plugins=[io] if io is not None else None,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )
    trainer.fit(model or BoringModel(), ckpt_path=ckpt_path)
    return trainer


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "checkpoints").iterdir())


def test_only_the_newest_step_checkpoints_stay_and_deletion_follows_the_write(tmp_path):
    io = _RecordingIO()
    _fit(tmp_path, PreferenceCheckpoint(every_n_train_steps=1, keep_last=2), 5, io=io, limit_val_batches=0)
    assert _names(tmp_path) == ["last.ckpt", "step=4.ckpt", "step=5.ckpt"]
    saves = [name for kind, name in io.events if kind == "save" and name.startswith("step=")]
    assert saves[:5] == [f"step={n}.ckpt" for n in range(1, 6)]
    for n in (1, 2, 3):  # step n is removed right after step n + 2 is written, never before
        assert io.events.index(("remove", f"step={n}.ckpt")) == io.events.index(("save", f"step={n + 2}.ckpt")) + 1


def test_keep_last_goes_on_after_a_resume(tmp_path):
    _fit(tmp_path, PreferenceCheckpoint(every_n_train_steps=1, keep_last=2), 3, limit_val_batches=0)
    assert _names(tmp_path) == ["last.ckpt", "step=2.ckpt", "step=3.ckpt"]
    callback = PreferenceCheckpoint(every_n_train_steps=1, keep_last=2)
    _fit(tmp_path, callback, 6, ckpt_path="last", limit_val_batches=0)
    assert _names(tmp_path) == ["last.ckpt", "step=5.ckpt", "step=6.ckpt"]
    assert int(torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]) == 6


def test_the_monitored_best_is_never_deleted(tmp_path):
    """Validation after every step; the best score is at step 2; keep_last=1 keeps it beside the newest (step 4:
    at step 5, the last, ``last.ckpt`` is written at the end of the step, before that validation)."""
    callback = PreferenceCheckpoint(every_n_train_steps=None, monitor="score", mode="min", keep_last=1)
    model = _Scored([0.5, 0.1, 0.7, 0.8, 0.9])
    _fit(tmp_path, callback, 5, model=model, val_check_interval=1, check_val_every_n_epoch=None, limit_val_batches=1)
    assert Path(callback.best_model_path).name == "step=2.ckpt"
    assert _names(tmp_path) == ["last.ckpt", "step=2.ckpt", "step=4.ckpt"]


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_keep_last_must_be_a_positive_whole_number(value):
    with pytest.raises(ValueError, match="keep_last must be a whole number of at least 1"):
        PreferenceCheckpoint(keep_last=value)


def test_keep_last_in_yaml(tmp_path):
    from betadpo_lightning.commands.cli import main

    config = tmp_path / "checkpoints.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: betadpo_lightning.callbacks.PreferenceCheckpoint\n"
        "      init_args: {every_n_train_steps: 100, keep_last: 3}\n",
        encoding="utf-8",
    )
    args = ["--config", str(ROOT / "configs" / "quickstart.yaml"), "--config", str(config)]
    args += [f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.logger=false"]
    trainer = main(args, run=False).trainer
    (callback,) = [c for c in trainer.callbacks if isinstance(c, PreferenceCheckpoint)]
    assert (callback.keep_last, callback._every_n_train_steps) == (3, 100)
