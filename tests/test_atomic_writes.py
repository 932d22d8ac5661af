"""Every file the library writes is replaced whole or not at all: a write that fails midway (a serializer that
raises, a full disk) leaves the previous file as it was and no temporary file; checkpoints are renamed into place,
never copied across filesystems."""

from __future__ import annotations

import errno
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from betadpo_lightning.atomic import atomic_directory, atomic_write, atomic_write_bytes, atomic_write_text
from betadpo_lightning.callbacks import PreferenceCheckpoint
from betadpo_lightning.training.module import PreferenceModule
from helpers.tiny import TINY_LLAMA, RandomPairsData
from helpers.trainers import quiet_trainer

SRC = Path(__file__).parents[1] / "src" / "betadpo_lightning"


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def _full_disk_after(count: int):
    """A writer that writes ``count`` bytes, then fails as a full disk does."""

    def write(file):
        file.write(b"x" * count)
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def _interrupted(file) -> None:
    file.write(b"partial")
    raise KeyboardInterrupt


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_write(target, lambda file: torch.save({"step": torch.tensor(3)}, file))
    before = target.read_bytes()
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, _full_disk_after(100_000))
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_write(target, lambda file: torch.save({"w": torch.zeros(1000), "x": Unpicklable()}, file))
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, _interrupted)
    assert target.read_bytes() == before
    assert _names(tmp_path) == ["last.ckpt"]
    assert int(torch.load(target, weights_only=True)["step"]) == 3


def test_a_write_replaces_the_file_keeping_its_permissions(tmp_path):
    target = tmp_path / "sub" / "meta.json"
    atomic_write_text(target, "one")
    assert (target.stat().st_mode & 0o777) == 0o666 & ~_umask()  # not mkstemp's private 0o600
    target.chmod(0o640)
    atomic_write_bytes(target, b"two")
    assert target.read_text() == "two"
    assert target.stat().st_mode & 0o777 == 0o640
    assert _names(target.parent) == ["meta.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_temporary_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    """A writer killed outright (SIGKILL) cannot clean up; the next write of the same file on this machine removes
    what a dead process left, and never what a live one is writing."""
    target = tmp_path / "last.ckpt"
    code = (
        "import sys, time; from betadpo_lightning.atomic import atomic_write\n"
        "def write(file):\n    file.write(b'x' * 1000); file.flush(); print('writing', flush=True); time.sleep(60)\n"
        f"atomic_write({str(target)!r}, write)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    live = _names(tmp_path)
    assert len(live) == 1
    assert live[0].startswith(".last.ckpt.")
    atomic_write_text(target, "meanwhile")  # the writer is alive: its file stays
    assert live[0] in _names(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    atomic_write_text(target, "new")
    assert _names(tmp_path) == ["last.ckpt"]
    assert target.read_text() == "new"


def test_a_full_disk_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    """A real write error midway: the file size limit (RLIMIT_FSIZE) stops the write of a 1 MB checkpoint after
    64 kB, as a full disk would; the previous checkpoint stays whole and loadable, and nothing else is left."""
    code = (
        "import resource, signal, sys, torch\n"
        "from betadpo_lightning.callbacks.checkpoint_io import PreferenceCheckpointIO\n"
        "io = PreferenceCheckpointIO()\n"
        "old = {'state_dict': {'w': torch.ones(10)}, 'pytorch-lightning_version': '2.6.0'}\n"
        "io.save_checkpoint(old, sys.argv[1])\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "try:\n"
        "    io.save_checkpoint({**old, 'state_dict': {'w': torch.zeros(250_000)}}, sys.argv[1])\n"
        "except Exception as error:  # torch reports the short write as a RuntimeError\n"
        "    print('failed:', type(error).__name__)\n"
    )
    target = tmp_path / "step=20.ckpt"
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120)
    assert "failed:" in proc.stdout, proc.stderr[-2000:]
    assert _names(tmp_path) == ["step=20.ckpt"]
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(10))


@pytest.fixture
def other_filesystem_tempdir(tmp_path, monkeypatch):
    """The system's temporary folder on another filesystem than ``tmp_path`` (``/dev/shm``, a tmpfs)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a temporary folder on another filesystem")
    folder = Path(tempfile.mkdtemp(dir=shm))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _half_copy_then_full_disk(source, destination, *args, **kwargs):
    """``shutil.move`` across filesystems is a copy; here the disk fills up halfway through it."""
    data = Path(source).read_bytes()
    Path(destination).write_bytes(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_checkpoint_is_renamed_into_place_never_copied_from_another_filesystem(
    tmp_path, other_filesystem_tempdir, monkeypatch
):
    """With the system's temporary folder on another filesystem than the checkpoints, a save never copies a file
    across (a copy cut short by a full disk or a kill would truncate last.ckpt): the previous last.ckpt stays whole
    even when moving files across filesystems fails halfway, and no temporary file is left on either side."""
    pl.seed_everything(0)
    module = PreferenceModule(model_config=TINY_LLAMA, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    checkpoint = PreferenceCheckpoint(dirpath=str(tmp_path / "checkpoints"))
    trainer = quiet_trainer(tmp_path, 2, [checkpoint], enable_checkpointing=True, limit_val_batches=0)
    trainer.fit(module, datamodule=RandomPairsData(size=8, batch_size=4))
    last = tmp_path / "checkpoints" / "last.ckpt"
    monkeypatch.setattr(shutil, "move", _half_copy_then_full_disk)
    trainer.save_checkpoint(last)  # the same state again: written and renamed in the checkpoint folder
    assert int(torch.load(last, weights_only=False)["global_step"]) == 2
    assert _names(tmp_path / "checkpoints") == ["last.ckpt"]
    assert _names(other_filesystem_tempdir) == []


def _fill_then_fail(target: Path) -> None:
    with atomic_directory(target) as staging:
        (staging / "config.json").write_text('{"new": 1}')
        raise RuntimeError("midway")


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        (staging / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="midway"):
        _fill_then_fail(target)
    assert (target / "config.json").read_text() == "{}"
    with atomic_directory(target) as staging:
        (staging / "weights.bin").write_bytes(b"1")
    assert _names(target) == ["weights.bin"]
    assert _names(tmp_path) == ["model"]
    with atomic_directory(target, replace=False) as staging:  # a concurrent writer finished first: kept
        (staging / "other.bin").write_bytes(b"2")
    assert _names(target) == ["weights.bin"]
    assert _names(tmp_path) == ["model"]


WRITES = re.compile(
    r"open\([^)]*['\"][wax]b?['\"]|\.write_(text|bytes)\(|torch\.save\(|\.savefig\(|json\.dump\(|save_pretrained\("
)
ALLOWED = {
    "atomic.py": "the helper itself",
    "commands/export.py": "a scratch file inside the export's staging folder, deleted before it is moved in place",
    "data/synthetic/files.py": "files inside the staging folder of atomic_directory",
    "commands/run_lock.py": "a lock file, taken by creating it exclusively (O_EXCL), not replaced",
    "training/sft.py": "save_pretrained into the staging folder of atomic_directory",
}


def test_the_library_writes_files_only_through_the_atomic_helper():
    """No file is written by ``open(..., "w")``, ``write_text``, ``torch.save``, ``savefig``, ``json.dump`` or
    ``save_pretrained`` outside the helper and the listed exceptions."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            prose = code.lstrip().startswith(("``", '"', ">>>"))  # docstrings and doctests
            inside = "atomic_write" in code  # the serializer handed to the helper
            if WRITES.search(code) and not (prose or inside or name in ALLOWED):
                found.append(f"{name}:{number}: {line.strip()}")
    assert found == []
