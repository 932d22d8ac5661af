"""PreferenceDataModule end to end: local files, real-shaped formats, the synthetic dataset, caching and stats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from betadpo_lightning.data import SYNTHETIC_VOCAB_SIZE, PreferenceDataError, PreferenceDataModule, SyntheticConfig
from betadpo_lightning.data.tokenize import PairTokenizer

SMALL_SYNTHETIC = SyntheticConfig(train_size=40, validation_size=12, seed=3)

# Expected on the fixture tokenizer and single-file fixtures; asserted with pytest.warns where it matters.
pytestmark = [
    pytest.mark.filterwarnings("ignore:tokenizer .* has no pad token:UserWarning"),
    pytest.mark.filterwarnings("ignore:dataset .* has no split 'validation':UserWarning"),
]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _ready(**kwargs) -> PreferenceDataModule:
    module = PreferenceDataModule(**kwargs)
    module.prepare_data()
    module.setup("fit")
    return module


def _all_batches(loader) -> list[dict[str, torch.Tensor]]:
    return list(loader)


@pytest.fixture
def standard_files(fixtures_dir: Path, tmp_path: Path) -> dict[str, Path]:
    rows = _rows(fixtures_dir / "standard.jsonl")
    parquet = tmp_path / "standard.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    return {"jsonl": fixtures_dir / "standard.jsonl", "csv": fixtures_dir / "standard.csv", "parquet": parquet}


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "csv"])
def test_local_file_to_batches(kind: str, standard_files, bpe_tokenizer_dir: Path, tmp_path: Path, fixtures_dir):
    rows = _rows(fixtures_dir / "standard.jsonl")
    with pytest.warns(UserWarning, match="no split 'validation'"):
        module = _ready(dataset=str(standard_files[kind]), tokenizer=str(bpe_tokenizer_dir),
                        cache_dir=str(tmp_path / "cache"), batch_size=4)  # fmt: skip
    tokenizer = module.tokenizer
    assert module.stats["train"].rows == module.stats["train"].kept == len(rows)
    assert module.val_dataloader() == []
    batches = _all_batches(module.train_dataloader())
    assert [len(batch["pair_index"]) for batch in batches] == [4, 2]  # drop_last=False
    seen = []
    for batch in batches:
        size = len(batch["pair_index"])
        for position, index in enumerate(batch["pair_index"].tolist()):
            row = rows[index]
            for offset, key in ((0, "chosen"), (size, "rejected")):
                ids = batch["input_ids"][position + offset][batch["attention_mask"][position + offset].bool()]
                labels = batch["labels"][position + offset]
                response = labels[labels != -100]
                assert tokenizer.decode(ids, skip_special_tokens=True) == row["prompt"] + row[key]
                assert tokenizer.decode(response, skip_special_tokens=True) == row[key]
            seen.append(index)
    assert sorted(seen) == list(range(len(rows)))


def test_the_three_file_kinds_give_identical_pairs(standard_files, bpe_tokenizer_dir: Path, tmp_path: Path):
    pairs = []
    for kind, path in standard_files.items():
        module = _ready(dataset=str(path), tokenizer=str(bpe_tokenizer_dir), cache_dir=str(tmp_path / kind))
        pairs.append(module.splits["train"][:])
    assert pairs[0] == pairs[1] == pairs[2]


def test_hh_rlhf_implicit_prompts(fixtures_dir: Path, bpe_tokenizer_dir: Path, tmp_path: Path):
    module = _ready(dataset=str(fixtures_dir / "hh_rlhf.jsonl"), tokenizer=str(bpe_tokenizer_dir),
                    cache_dir=str(tmp_path), val_split=None)  # fmt: skip
    data = module.splits["train"]
    assert len(data) == 4
    for row in data:
        prompt = module.tokenizer.decode(row["prompt_input_ids"], skip_special_tokens=True)
        assert prompt.endswith("\n\nAssistant:")
        assert prompt.count("\n\nHuman:") >= 1


def test_ultrafeedback_conversational_rows(fixtures_dir: Path, bpe_tokenizer_dir: Path, tmp_path: Path):
    rows = _rows(fixtures_dir / "ultrafeedback.jsonl")
    module = _ready(dataset=str(fixtures_dir / "ultrafeedback.jsonl"), tokenizer=str(bpe_tokenizer_dir),
                    cache_dir=str(tmp_path), val_split=None)  # fmt: skip
    for pair in module.splits["train"]:
        row = rows[pair["index"]]
        prompt = module.tokenizer.decode(pair["prompt_input_ids"])
        assert prompt == f"<s><|im_start|>user\n{row['prompt']}<|im_end|>\n<|im_start|>assistant\n"
        chosen = module.tokenizer.decode(pair["chosen_input_ids"])
        assert chosen == row["chosen"][-1]["content"] + "<|im_end|>\n"


def test_builder_name_with_data_files(fixtures_dir: Path, bpe_tokenizer_dir: Path, tmp_path: Path):
    files = {"train": str(fixtures_dir / "standard.jsonl"), "validation": str(fixtures_dir / "bad_rows.jsonl")}
    # The splits are loaded one by one: the mixed-type 'chosen' column of bad_rows.jsonl keeps its values.
    with pytest.warns(UserWarning, match="'validation': 2/7 pairs kept; skipped empty_text=2, identical_pair=1"):
        module = _ready(dataset="json", data_files=files, tokenizer=str(bpe_tokenizer_dir), cache_dir=str(tmp_path),
                        on_bad_row="skip", eval_batch_size=1)  # fmt: skip
    assert (module.stats["train"].kept, module.stats["validation"].kept) == (6, 2)
    assert [batch["pair_index"].tolist() for batch in module.val_dataloader()] == [[0], [6]]


def test_pad_token_falls_back_to_eos_with_warning(standard_files, bpe_tokenizer_dir: Path, tmp_path: Path):
    with pytest.warns(UserWarning, match="has no pad token; using its EOS token"):
        module = _ready(dataset=str(standard_files["jsonl"]), tokenizer=str(bpe_tokenizer_dir), val_split=None,
                        cache_dir=str(tmp_path), batch_size=6)  # fmt: skip
    assert module.tokenizer.pad_token_id == module.tokenizer.eos_token_id
    batch = next(iter(module.train_dataloader()))
    assert (batch["input_ids"][batch["attention_mask"] == 0] == module.tokenizer.eos_token_id).all()


def test_synthetic_dataset_end_to_end(tmp_path: Path):
    module = _ready(cache_dir=str(tmp_path), synthetic=SMALL_SYNTHETIC, batch_size=8, max_length=64)
    assert len(module.tokenizer) == SYNTHETIC_VOCAB_SIZE
    assert module.stats["train"].kept == 40
    assert module.stats["validation"].kept == 12
    assert (tmp_path / f"synthetic-{SMALL_SYNTHETIC.digest()}" / "tokenizer" / "tokenizer.json").is_file()
    batch = next(iter(module.val_dataloader()))
    assert batch["input_ids"].shape[0] == 16
    assert int(batch["input_ids"].max()) < SYNTHETIC_VOCAB_SIZE
    assert batch["pair_index"].tolist() == list(range(8))  # validation keeps dataset order


def test_synthetic_conversational_format(tmp_path: Path):
    config = SyntheticConfig(train_size=10, validation_size=0, format="conversational")
    module = _ready(cache_dir=str(tmp_path), synthetic=config)
    assert "validation" not in module.splits
    pair = module.splits["train"][0]
    assert module.tokenizer.decode(pair["prompt_input_ids"]).endswith("</s> <|assistant|>")
    assert pair["chosen_input_ids"][-1] == module.tokenizer.eos_token_id


def test_second_run_reads_the_cache_instead_of_tokenizing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    options = {"cache_dir": str(tmp_path), "synthetic": SMALL_SYNTHETIC}
    first = _ready(**options)
    calls = []
    original = PairTokenizer.__call__

    def counting(self, batch, indices):
        calls.append(len(indices))
        return original(self, batch, indices)

    monkeypatch.setattr(PairTokenizer, "__call__", counting)
    second = _ready(**options)
    assert calls == []
    for split in ("train", "validation"):
        assert second.splits[split].cache_files == first.splits[split].cache_files
        assert second.splits[split][:] == first.splits[split][:]
    # Changing a setting that affects tokenization does tokenize again (so the check above can fail).
    _ready(**options, max_length=16)
    assert sum(calls) == SMALL_SYNTHETIC.train_size + SMALL_SYNTHETIC.validation_size


def test_val_fraction_split_is_seeded_and_keeps_source_indices(tmp_path: Path):
    def split_indices(seed: int) -> tuple[list[int], list[int]]:
        module = _ready(cache_dir=str(tmp_path), synthetic=SMALL_SYNTHETIC, val_fraction=0.25, seed=seed)
        return list(module.splits["train"]["index"]), list(module.splits["validation"]["index"])

    train, validation = split_indices(seed=1)
    assert len(validation) == 10
    assert sorted(train + validation) == list(range(SMALL_SYNTHETIC.train_size))
    assert split_indices(seed=1) == (train, validation)
    assert split_indices(seed=2) != (train, validation)


def test_training_order_is_shuffled_and_seeded(tmp_path: Path):
    def order(seed: int) -> list[int]:
        module = _ready(cache_dir=str(tmp_path), synthetic=SMALL_SYNTHETIC, batch_size=16, seed=seed)
        return [i for batch in module.train_dataloader() for i in batch["pair_index"].tolist()]

    first = order(0)
    assert sorted(first) == list(range(40))
    assert first != list(range(40))
    assert order(0) == first
    assert order(1) != first


def test_parallel_tokenization_matches_and_reports_rows(fixtures_dir: Path, bpe_tokenizer_dir: Path, tmp_path: Path):
    serial = _ready(cache_dir=str(tmp_path / "serial"), synthetic=SMALL_SYNTHETIC)
    parallel = _ready(cache_dir=str(tmp_path / "parallel"), synthetic=SMALL_SYNTHETIC, num_proc=2)
    assert parallel.splits["train"][:] == serial.splits["train"][:]
    module = PreferenceDataModule(dataset=str(fixtures_dir / "bad_rows.jsonl"), tokenizer=str(bpe_tokenizer_dir),
                                  cache_dir=str(tmp_path / "bad"), val_split=None, num_proc=2)  # fmt: skip
    with pytest.raises(PreferenceDataError, match=r"bad_rows.jsonl', line 2, field 'rejected'") as info:
        module.prepare_data()
    assert (info.value.row, info.value.field, info.value.reason) == (1, "rejected", "identical_pair")


def test_truncation_counts(fixtures_dir: Path, bpe_tokenizer_dir: Path, tmp_path: Path):
    module = _ready(dataset=str(fixtures_dir / "over_long.jsonl"), tokenizer=str(bpe_tokenizer_dir),
                    cache_dir=str(tmp_path), val_split=None, max_length=64, max_prompt_length=24)  # fmt: skip
    assert module.stats["train"].truncated == {"prompt": 1, "chosen": 2, "rejected": 1}
    for pair in module.splits["train"]:
        assert len(pair["prompt_input_ids"]) + len(pair["chosen_input_ids"]) <= 64
        assert len(pair["prompt_input_ids"]) + len(pair["rejected_input_ids"]) <= 64


def test_folder_with_split_files(fixtures_dir: Path, bpe_tokenizer_dir: Path, tmp_path: Path):
    folder = tmp_path / "data"
    folder.mkdir()
    lines = (fixtures_dir / "standard.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "train.jsonl").write_text("".join(lines[:4]), encoding="utf-8")
    (folder / "validation.jsonl").write_text("".join(lines[4:]), encoding="utf-8")
    module = _ready(dataset=str(folder), tokenizer=str(bpe_tokenizer_dir), cache_dir=str(tmp_path / "cache"))
    assert (module.stats["train"].kept, module.stats["validation"].kept) == (4, 2)
    batches = _all_batches(module.val_dataloader())
    assert [batch["pair_index"].tolist() for batch in batches] == [[0, 1]]


# lightning 2.6 with torch 2.13 warns about torch's deprecated pytree LeafSpec inside Trainer.fit.
@pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning")
def test_runs_under_a_trainer(tmp_path: Path):
    import lightning.pytorch as pl

    class Consumer(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(SYNTHETIC_VOCAB_SIZE, 4)
            self.rows = 0

        def training_step(self, batch, batch_idx):
            assert batch["input_ids"].shape[0] == 2 * batch["pair_index"].shape[0]
            self.rows += batch["input_ids"].shape[0]
            mask = (batch["labels"] != -100).unsqueeze(-1)
            return (self.embedding(batch["input_ids"]) * mask).mean()

        def validation_step(self, batch, batch_idx):
            self.log("rows", float(batch["input_ids"].shape[0]), batch_size=batch["pair_index"].shape[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = PreferenceDataModule(cache_dir=str(tmp_path), synthetic=SMALL_SYNTHETIC, batch_size=16)
    model = Consumer()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=module)
    assert model.rows == 2 * SMALL_SYNTHETIC.train_size
    assert trainer.num_training_batches == math.ceil(40 / 16)


def test_arguments_parse_from_the_command_line_signature():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(PreferenceDataModule, "data")
    config = parser.parse_args(
        ["--data.dataset", "pairs.jsonl", "--data.tokenizer", "gpt2", "--data.chat_template", "true",
         "--data.synthetic.label_noise", "0.2", "--data.tokenizer_kwargs", '{"revision": "main"}']
    )  # fmt: skip
    assert config.data.chat_template is True
    assert config.data.synthetic.label_noise == 0.2
    assert config.data.tokenizer_kwargs == {"revision": "main"}
    help_text = parser.format_help()
    assert "Pairs per validation batch and device" in help_text
