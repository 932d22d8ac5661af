"""The README's "Training on your own data" command runs as written, on local files the test creates beside it."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import build_bpe_tokenizer, save_tiny_model

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
MARKER = "example:own-data"
INTERPRETERS = ("python", "python3", ".venv/bin/python")
SHORT_RUN = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
             "--trainer.enable_progress_bar", "false"]  # fmt: skip


def own_data_command(text: str) -> list[str] | None:
    """The arguments of the single command in the bash block between the markers, or ``None`` without the markers."""
    match = re.search(rf"<!-- {MARKER} -->\s*```bash\n(.*?)```\s*<!-- /{MARKER} -->", text, re.S)
    if match is None:
        return None
    lines = [line for line in match.group(1).replace("\\\n", " ").splitlines() if line.strip()]
    commands = [line for line in lines if not line.lstrip().startswith("#")]
    assert len(commands) == 1, f"expected one command in the {MARKER} block, got {commands}"
    return shlex.split(commands[0])


def _option(args: list[str], name: str) -> str | None:
    for position, arg in enumerate(args):
        if arg == name and position + 1 < len(args):
            return args[position + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _write_pairs(path: Path, count: int = 48) -> None:
    """Standard rows (prompt/chosen/rejected strings) in the file's own format."""
    rows = [
        {"prompt": f"Question {i}: say hello", "chosen": " hello world", "rejected": f" world {i} hello again"}
        for i in range(count)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["prompt", "chosen", "rejected"])
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def run_own_data_command(args: list[str], workdir: Path) -> subprocess.CompletedProcess:
    """Create the files the command names in ``workdir`` (linking the repository's ``cli.py`` and ``configs``) and run
    it there for two steps with the current interpreter."""
    assert args[0] in INTERPRETERS, f"expected the command to start with one of {INTERPRETERS}, got {args[0]!r}"
    for name in ("cli.py", "configs"):
        (workdir / name).symlink_to(ROOT / name)
    dataset = _option(args, "--data.dataset")
    assert dataset is not None, "expected the command to name its data with --data.dataset"
    _write_pairs(workdir / dataset)
    tokenizer = _option(args, "--data.tokenizer")
    if tokenizer is not None:
        build_bpe_tokenizer().save_pretrained(str(workdir / tokenizer))
    model = _option(args, "--model.model_name_or_path")
    if model is not None:
        tokenizer_dir = workdir / "tokenizer-for-model"
        build_bpe_tokenizer().save_pretrained(str(tokenizer_dir))
        save_tiny_model(workdir / model, tokenizer_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(workdir / "hf-home")}  # fmt: skip
    return subprocess.run(
        [sys.executable, *args[1:], *SHORT_RUN], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="links cli.py and configs into the working folder")
def test_readme_own_data_command_trains_and_logs(tmp_path: Path):
    args = own_data_command(README.read_text(encoding="utf-8"))
    if args is None:
        pytest.skip(f"README.md has no <!-- {MARKER} --> bash block yet")
    proc = run_own_data_command(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    output = proc.stdout + proc.stderr
    assert re.search(r"preference data 'train': \d+/\d+ pairs kept", output), output[-2000:]
    root = tmp_path / (_option(args, "--trainer.default_root_dir") or "runs/quickstart")
    (metrics,) = root.glob("logs/version_*/metrics.csv")
    header = metrics.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert "train/loss" in header
    if _option(args, "--data.val_fraction") is not None:
        assert "val/loss" in header  # validated after the second step
    rows = list(csv.DictReader(metrics.open(encoding="utf-8")))
    assert max(int(row["step"]) for row in rows) >= 1


def test_command_extraction():
    text = (
        "intro\n<!-- example:own-data -->\n```bash\n# a comment\npython cli.py fit --config c.yaml \\\n"
        "  --data.dataset 'my pairs.jsonl' --data.tokenizer=tok\n```\n<!-- /example:own-data -->\n"
    )
    args = own_data_command(text)
    assert args == ["python", "cli.py", "fit", "--config", "c.yaml", "--data.dataset", "my pairs.jsonl",
                    "--data.tokenizer=tok"]  # fmt: skip
    assert (_option(args, "--data.dataset"), _option(args, "--data.tokenizer")) == ("my pairs.jsonl", "tok")
    assert own_data_command("no example here") is None
    with pytest.raises(AssertionError, match="expected one command"):
        own_data_command(text.replace("# a comment", "ls"))
