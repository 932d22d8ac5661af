"""``betadpo-preview``: one pair of the data exactly as training will see it, without building the model.

It reads the same configuration as ``python cli.py fit`` (``--config``, any ``--data.*`` or
``--model.model_name_or_path`` override), loads the data source and the tokenizer, and prints for one source row:
the split used (with the note when a configured split falls back to another), the detected format, the chat template
that renders it, the token counts of the prompt and both responses after truncation, and the decoded token ids of
``prompt + chosen`` and ``prompt + rejected`` with the response marked ``⟦...⟧`` — so a wrong template, a missing
EOS or a prompt/response boundary in the wrong place shows before any training::

    betadpo-preview --config configs/ultrafeedback_qwen2.5_0.5b_beta_dpo.yaml --data.dataset my_pairs.jsonl --row 3

(``python -m betadpo_lightning.commands.data_preview`` is the same). The row is rendered with
``on_bad_row="error"`` whatever the config says, so a row that training would skip shows why. Neither the model nor the
Trainer is built: only the ``data`` section is instantiated.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import datasets
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import ArgsType, LightningArgumentParser
from transformers import PreTrainedTokenizerBase
from typing_extensions import override

from betadpo_lightning.commands.cli import BetaDPOCLI
from betadpo_lightning.commands.cli_errors import CLIError, explain, report
from betadpo_lightning.commands.cli_options import config_error
from betadpo_lightning.commands.console import quiet_known_noise
from betadpo_lightning.data.datamodule import PreferenceDataModule
from betadpo_lightning.data.formats import ResolvedFormat, resolve_format
from betadpo_lightning.data.render import PairRenderer
from betadpo_lightning.data.sources import load_source
from betadpo_lightning.data.split_names import choose_split, match_splits
from betadpo_lightning.data.synthetic import split_files
from betadpo_lightning.data.templates import parse_chat_template
from betadpo_lightning.data.tokenize import STATUS_OK, PairTokenizer, TokenizedPair

__all__ = ["PreviewCLI", "main", "preview"]

Split = Literal["train", "validation", "test"]
_SAMPLE = 100  # rows the format is detected from, as in training


class PreviewCLI(BetaDPOCLI):
    """The preference command line's parser (same config, same overrides) that builds only the data module.

    Adds ``--row`` (the source row to show) and ``--split`` (``train``, ``validation`` or ``test``).
    """

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--row", type=int, default=0, help="Index of the source row to show (default 0).")
        parser.add_argument("--split", type=Split, default="train", help="Which split to show a row of.")

    @override
    def instantiate_classes(self) -> None:
        config = self._section()
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(PreferenceDataModule, "data")
        try:
            parsed = parser.parse_object({"data": config["data"].as_dict()})
            self.datamodule = parser.instantiate(parsed)["data"]
        except Exception as error:
            raise config_error(error, config, self._groups(), self.links) from error


def preview(module: PreferenceDataModule, row: int = 0, split: Split = "train") -> str:
    """The text shown for one source row: source, format, template, token counts and the two decoded sequences.

    Args:
        module: The data module built from the configuration (not prepared: nothing is tokenized but this row).
        row: Index of the row in its source split.
        split: ``"train"``, ``"validation"`` or ``"test"``.

    Returns:
        The preview, several lines.

    Raises:
        PreferenceDataError: When the row cannot be rendered or tokenized (naming the row and field), or no
            training split can be chosen.
        CLIError: When the row or the split asked for does not exist.
    """
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw, source_name = _raw_split(module, split, notes)
        tokenizer = _tokenizer(module)
        if not 0 <= row < len(raw):
            raise CLIError(f"--row {row}: split '{source_name}' has {len(raw)} rows (0 to {len(raw) - 1})")
        spec = module.spec
        fmt = resolve_format(raw[:_SAMPLE], spec.names, spec.format)
        renderer = PairRenderer(tokenizer, fmt, spec.names, spec.chat_template, spec.chat_template_kwargs)
        pair_tokenizer = PairTokenizer(tokenizer, renderer, spec.limits, on_bad_row="error")
        values = raw[row]
        result = _tokenize(pair_tokenizer, values, row)
    notes += [str(warning.message) for warning in caught if issubclass(warning.category, UserWarning)]
    template = parse_chat_template(module.hparams.get("chat_template", "auto"))
    lines = [f"data preview: row {row} of split '{source_name}' of '{module.dataset}' ({len(raw)} rows)"]
    lines += [f"note: {note}" for note in notes]
    lines.append(f"format: {_describe_format(fmt, spec.format, renderer, values)}")
    lines.append(f"chat template: {template.describe(tokenizer, renderer.use_template)}")
    lines.append(f"tokenizer: {tokenizer.name_or_path} (EOS {tokenizer.eos_token!r})")
    if isinstance(result, str):
        lines.append(f"this row is not kept by training: {result} (preview another with --row)")
        return "\n".join(lines)
    lines.append(_counts(result, spec.limits))
    lines.append("each sequence is decoded from its token ids; the response is between ⟦ and ⟧")
    lines += _sequences(tokenizer, result)
    return "\n".join(lines)


def _raw_split(module: PreferenceDataModule, split: Split, notes: list[str]) -> tuple[datasets.Dataset, str]:
    """The raw source split behind ``split`` (falling back as training does) and its name."""
    held_out = module.val_fraction is not None  # then no validation split is read
    wanted = {"train": module.train_split, "validation": None if held_out else module.val_split}
    wanted["test"] = module.test_split
    if split == "validation" and held_out:
        notes.append("validation rows are drawn from the training split (val_fraction); showing a training row")
        split = "train"
    name = wanted[split]
    if name is None:
        raise CLIError(f"--split {split}: the configuration sets no {split} split (data.{_option(split)})")
    if module.synthetic is not None:
        module.prepare_data()  # writes the synthetic files (and tokenizes them: they are small)
        files = split_files(module.synthetic, module._split_source().synthetic_folder())
        loaded = load_source("json", data_files=dict(files), cache_dir=module.cache_dir)
    else:
        on_bad_row = module.spec.on_bad_row  # malformed lines: named, or skipped (with a note) as in training
        loaded = load_source(module.dataset, module.dataset_config, module.data_files, module.cache_dir, on_bad_row)
    splits, _ = match_splits(loaded.splits, loaded.skipped_lines, module.dataset, wanted)
    available = list(loaded.splits)
    train = choose_split(available, module.train_split, "train")
    used = train if split == "train" else choose_split(available, name, split, exclude=train)
    if used is None:
        raise CLIError(
            f"--split {split}: dataset '{module.dataset}' has no split '{name}' (available: {sorted(available)})"
        )
    return splits[used], used


def _option(split: Split) -> str:
    return {"train": "train_split", "validation": "val_split", "test": "test_split"}[split]


def _tokenizer(module: PreferenceDataModule) -> PreTrainedTokenizerBase:
    return module._split_source().load_tokenizer(warn=True)


def _tokenize(function: PairTokenizer, values: dict[str, Any], row: int) -> TokenizedPair | str:
    """The row as training tokenizes it: its pair, or its status (``"dropped:too_long"``, ...) when not kept."""
    columns = function({name: [value] for name, value in values.items()}, [row])
    status = columns["status"][0]
    if status != STATUS_OK:
        return str(status)
    truncated = tuple(part for part in str(columns["truncation"][0]).split("+") if part != "none")
    ids = [list(columns[f"{part}_input_ids"][0]) for part in ("prompt", "chosen", "rejected")]  # type: ignore[call-overload]
    return TokenizedPair(*ids, truncated=truncated)


def _describe_format(fmt: ResolvedFormat, requested: str, renderer: PairRenderer, values: dict[str, Any]) -> str:
    names = renderer.names
    how = "detected" if requested == "auto" else "forced"
    if fmt.format == "implicit":
        kind = "message lists" if fmt.messages else "transcripts"
        return f"implicit ({how}): the prompt is what '{names.chosen}' and '{names.rejected}' ({kind}) share"
    text = f"{fmt.format} ({how}): prompt from '{names.prompt}', responses from '{names.chosen}'/'{names.rejected}'"
    strings = isinstance(values.get(names.chosen), str) and isinstance(values.get(names.prompt), str)
    if fmt.format == "standard" and not renderer.use_template:
        return text + ", strings used as raw text"
    return text + (", strings rendered as one user turn and one assistant turn" if strings else ", messages")


def _counts(pair: TokenizedPair, limits: Any) -> str:
    cut = ", ".join(pair.truncated) if pair.truncated else "nothing"
    return (
        f"tokens: prompt {len(pair.prompt)}, chosen {len(pair.chosen)}, rejected {len(pair.rejected)} "
        f"(max_length {limits.max_length}, max_prompt_length {limits.max_prompt_length}; truncated: {cut})"
    )


def _sequences(tokenizer: PreTrainedTokenizerBase, pair: TokenizedPair) -> list[str]:
    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    prompt = decode(pair.prompt)
    return [
        f"--- chosen: prompt ({len(pair.prompt)} tokens) ⟦response ({len(pair.chosen)} tokens)⟧ ---",
        f"{prompt}⟦{decode(pair.chosen)}⟧",
        f"--- rejected: the same prompt ⟦response ({len(pair.rejected)} tokens)⟧ ---",
        f"⟦{decode(pair.rejected)}⟧",
    ]


def main(args: ArgsType = None) -> int:
    """The ``betadpo-preview`` console script (``args=None`` reads ``sys.argv``); returns the exit code.

    A user's mistake (an unknown option, a missing file, a row that cannot be rendered) is printed in a few lines
    naming the option, file or row, with exit code 1 (2 for the command line itself).
    """
    quiet_known_noise()
    try:
        cli = PreviewCLI(
            _model_class(),
            PreferenceDataModule,
            args=args,
            run=False,
            parser_kwargs={"description": "Show one preference pair as training will see it (no model is built)."},
            auto_configure_optimizers=False,
        )
        print(preview(cli.datamodule, cli.config["row"], cli.config["split"]))
    except Exception as error:
        explained = explain(error)
        if explained is None:
            raise
        return report(error, explained)
    return 0


def _model_class() -> type:
    from betadpo_lightning.training.module import PreferenceModule

    return PreferenceModule


if __name__ == "__main__":
    raise SystemExit(main())
