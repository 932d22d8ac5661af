"""A fit resumed on other data than its checkpoint's is refused, saying what changed (split, pair counts before and
now), unless ``data.allow_changed_data`` allows it, with a warning; the fingerprint is content-based and computed
once per split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
import torch
import yaml

from betadpo_lightning.commands.cli import main
from betadpo_lightning.data.fingerprint import ChangedDataError, DataFingerprint, fingerprint_changes

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def _pairs(rows: int, flip: bool = False, start: int = 0) -> datasets.Dataset:
    """Tokenized pairs: prompt ``[i, i+1]``, chosen ``[7, i]``, rejected ``[9]`` (swapped when ``flip``)."""
    chosen = [[7, i] for i in range(start, start + rows)]
    rejected = [[9] for _ in range(rows)]
    if flip:
        chosen, rejected = rejected, chosen
    return datasets.Dataset.from_dict(
        {
            "prompt_input_ids": [[i, i + 1] for i in range(start, start + rows)],
            "chosen_input_ids": chosen,
            "rejected_input_ids": rejected,
            "index": list(range(start, start + rows)),
        }
    )


def test_changes_are_named_by_split_with_the_pair_counts():
    saved = DataFingerprint().of({"train": _pairs(200), "validation": _pairs(8)})
    assert fingerprint_changes(saved, DataFingerprint().of({"train": _pairs(200), "validation": _pairs(8)})) == []
    changed = DataFingerprint().of({"train": _pairs(120, flip=True), "validation": _pairs(8)})
    assert fingerprint_changes(saved, changed) == ["train: 200 pairs in the checkpoint, 120 pairs now"]
    flipped = DataFingerprint().of({"train": _pairs(200, flip=True)})
    assert fingerprint_changes(saved, flipped) == [
        "train: 200 pairs in both, with other content (token ids or order)",
        "validation: 8 pairs in the checkpoint, none now",
    ]
    reordered = DataFingerprint().of({"train": _pairs(200).select(range(199, -1, -1)), "validation": _pairs(8)})
    assert fingerprint_changes(saved, reordered) == [
        "train: 200 pairs in both, with other content (token ids or order)"
    ]
    one_token = _pairs(200).to_dict()
    one_token["rejected_input_ids"][150] = [10]
    edited = DataFingerprint().of({"train": datasets.Dataset.from_dict(one_token), "validation": _pairs(8)})
    assert fingerprint_changes(saved, edited)[0].startswith("train: 200 pairs in both")


def test_a_resume_on_changed_data_is_refused_or_allowed_with_a_warning():
    state = DataFingerprint().state_dict({"train": _pairs(200), "validation": _pairs(8)})
    now = {"train": _pairs(120, flip=True), "validation": _pairs(8)}
    with pytest.raises(ChangedDataError) as refused:
        DataFingerprint().check(state, now, "runs/x/checkpoints/last.ckpt")
    assert str(refused.value) == (
        "the data differ from those checkpoint runs/x/checkpoints/last.ckpt was trained on: train: 200 pairs in the "
        "checkpoint, 120 pairs now; resume on the same data, or pass --data.allow_changed_data true to continue on "
        "these on purpose"
    )
    with pytest.warns(UserWarning, match=r"data\.allow_changed_data is true\): train: 200 pairs in the checkpoint"):
        DataFingerprint(allow_changed=True).check(state, now, None)
    DataFingerprint().check(state, {"train": _pairs(200), "validation": _pairs(8)}, None)  # the same data
    DataFingerprint().check({}, now, None)  # a checkpoint saved before fingerprints: nothing to compare


def test_the_fingerprint_is_the_content_not_the_files(tmp_path):
    """``datasets``' own fingerprint of a local file follows its path and time; ours only the pairs."""
    rows = _pairs(6).to_list()
    first = tmp_path / "a" / "pairs.jsonl"
    first.parent.mkdir()
    first.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    second = tmp_path / "b" / "pairs.jsonl"
    second.parent.mkdir()
    shutil.copy(first, second)
    cache = str(tmp_path / "cache")
    a = datasets.load_dataset("json", data_files=str(first), cache_dir=cache)["train"]
    b = datasets.load_dataset("json", data_files=str(second), cache_dir=cache)["train"]
    assert a._fingerprint != b._fingerprint
    assert (
        DataFingerprint().of({"train": a})
        == DataFingerprint().of({"train": b})
        == DataFingerprint().of({"train": _pairs(6)})
    )


def test_computed_once_per_split_until_the_split_is_replaced():
    fingerprint = DataFingerprint()
    splits = {"train": _pairs(50)}
    first = fingerprint.of(splits)["train"]
    assert fingerprint.of(splits)["train"] is first  # cached, not hashed again
    splits["train"] = splits["train"].add_column("reference_chosen_logps", [0.0] * 50)  # columns attached
    again = fingerprint.of(splits)["train"]
    assert again is not first
    assert again == first  # the pairs themselves did not change


# ------------------------------------------------------------------------------------------ the command line


def _config(folder: Path) -> Path:
    settings = yaml.safe_load(QUICKSTART.read_text(encoding="utf-8"))
    settings["trainer"]["callbacks"] = [{"class_path": "betadpo_lightning.callbacks.PreferenceCheckpoint"}]
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def _args(command: str, tmp_path: Path, *extra: str) -> list[str]:
    args = [command, "--config", str(_config(tmp_path)), f"--trainer.default_root_dir={tmp_path / 'run'}"]
    args += [f"--data.cache_dir={tmp_path / 'cache'}", "--data.synthetic.validation_size=8", "--data.batch_size=4"]
    args += ["--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false"]
    return [*args, "--trainer.enable_model_summary=false", *extra]


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_command_line_refuses_to_resume_on_other_data(capsys, tmp_path):
    """Trained on 64 synthetic pairs; resumed on 48 pairs, or on the same 64 with other labels: refused with exit code
    1, unless allowed; evaluating the checkpoint on other data is not refused."""
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    main(_args("fit", tmp_path, "--data.synthetic.train_size=64", "--trainer.max_steps=2"))
    assert _step(last) == 2
    for change, expected in [
        (["--data.synthetic.train_size=48"], "train: 64 pairs in the checkpoint, 48 pairs now"),
        (
            ["--data.synthetic.train_size=64", "--data.synthetic.label_noise=0.5"],
            "train: 64 pairs in both, with other content (token ids or order)",
        ),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(_args("fit", tmp_path, *change, "--trainer.max_steps=4", "--ckpt_path=last"))
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        line = err[err.index("error: ") :].splitlines()[0]
        assert line.startswith(f"error: the data differ from those checkpoint {last} was trained on: {expected}")
        assert line.endswith("or pass --data.allow_changed_data true to continue on these on purpose")
        assert _step(last) == 2  # nothing trained

    main(_args("validate", tmp_path, "--data.synthetic.train_size=48", "--ckpt_path=last"))  # evaluation: fine
    allowed = ["--data.synthetic.train_size=48", "--data.allow_changed_data=true"]
    with pytest.warns(UserWarning, match="on changed data .*train: 64 pairs in the checkpoint, 48 pairs now"):
        main(_args("fit", tmp_path, *allowed, "--trainer.max_steps=4", "--ckpt_path=last"))
    assert _step(last) == 4
