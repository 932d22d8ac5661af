"""The tokenizer a training run used, found from what its checkpoint records (for the export of a checkpoint).

Looked for, in this order:

1. the checkpoint's ``datamodule_hyper_parameters`` (written when the datamodule saves its hyperparameters): the
   ``tokenizer`` option (with ``tokenizer_kwargs``), or the synthetic dataset's tokenizer for ``dataset:
   synthetic`` without one;
2. for a run of the command line (``python cli.py fit``), the ``config.yaml`` it writes beside its logs, found near
   the checkpoint (its folder, the folder above, and up to two levels below those, newest first) and used only when
   its ``model`` section holds the checkpoint's options; its ``data`` section is read as in 1;
3. the policy's own ``model_name_or_path`` (a hub name or a directory holding a tokenizer).

A tokenizer is loaded as the datamodule loads it (:func:`~betadpo_lightning.data.sources.load_tokenizer`: one without
a pad token gets its EOS token as pad token), so the exported tokenizer is the one the policy was trained with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from transformers import PreTrainedTokenizerBase

from betadpo_lightning.models.policy_checkpoint import first_line

__all__ = ["FoundTokenizer", "TokenizerError", "find_tokenizer"]

CLI_CONFIG_FILE = "config.yaml"
"""The name under which LightningCLI saves a run's resolved config."""


_RUN_OPTIONS = ("model_name_or_path", "lora", "quantization", "dtype", "loss_type", "beta", "label_smoothing")
"""``PreferenceModule`` options a run's config and its checkpoint must agree on (besides ``model_config``)."""


class TokenizerError(ValueError):
    """The tokenizer named on the command line cannot be loaded."""


@dataclass(frozen=True)
class FoundTokenizer:
    """The run's tokenizer, or why there is none.

    Args:
        tokenizer: the tokenizer, or ``None`` when none was found.
        source: where it came from, or what was tried.
    """

    tokenizer: PreTrainedTokenizerBase | None
    source: str


def find_tokenizer(
    checkpoint: Mapping[str, Any], checkpoint_path: Path, vocab_rows: int, name: str | None = None
) -> FoundTokenizer:
    """The tokenizer of the run that wrote ``checkpoint``: ``name`` if given, else what the run records.

    Args:
        checkpoint: the checkpoint (``hyper_parameters``, optionally ``datamodule_hyper_parameters``).
        checkpoint_path: where it was read from (the CLI's ``config.yaml`` is looked for near it).
        vocab_rows: rows of the policy's input embedding; a tokenizer with more tokens is not the policy's.
        name: a hub name or folder that overrides what the run records.

    Returns:
        The tokenizer and its source, or ``None`` and what was tried.

    Raises:
        TokenizerError: when ``name`` is given and cannot be loaded, or has more tokens than ``vocab_rows``.
    """
    if name is not None:
        try:
            tokenizer = _load(name, {})
        except (OSError, ValueError) as error:
            raise TokenizerError(f"--tokenizer {name}: cannot load it ({first_line(error)})") from None
        if len(tokenizer) > vocab_rows:
            raise TokenizerError(f"--tokenizer {name}: {_too_large(tokenizer, vocab_rows)}; pass the policy's own")
        return FoundTokenizer(tokenizer, name)
    hparams = checkpoint["hyper_parameters"]
    tried: list[str] = []
    candidates = list(_recorded_data_options(checkpoint, checkpoint_path))
    if hparams.get("model_name_or_path"):
        candidates.append(("the policy's model_name_or_path", {"tokenizer": hparams["model_name_or_path"]}))
    for where, options in candidates:
        choice = _from_data_options(options)
        if choice is None:
            continue
        what, load = choice
        try:
            tokenizer = load()
        except (OSError, ValueError) as error:
            tried.append(f"{what} from {where}: {first_line(error)}")
            continue
        if len(tokenizer) > vocab_rows:
            tried.append(f"{what} from {where}: {_too_large(tokenizer, vocab_rows)}")
            continue
        return FoundTokenizer(tokenizer, f"{what} (from {where})")
    return FoundTokenizer(None, "; ".join(tried) or "the checkpoint records no tokenizer")


def _too_large(tokenizer: PreTrainedTokenizerBase, vocab_rows: int) -> str:
    return f"its {len(tokenizer)} tokens do not fit the policy's {vocab_rows} embedding rows"


def _load(name: str, kwargs: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    from betadpo_lightning.data.sources import load_tokenizer

    return load_tokenizer(name, kwargs, warn=False)


def _synthetic() -> PreTrainedTokenizerBase:
    from betadpo_lightning.data.synthetic import build_synthetic_tokenizer

    return build_synthetic_tokenizer()  # the same tokenizer the dataset writes beside its files, built in code


def _from_data_options(options: Mapping[str, Any]) -> tuple[str, Callable[[], PreTrainedTokenizerBase]] | None:
    """What the datamodule options ``options`` load as the tokenizer: a description and a loader, or ``None``."""
    name = options.get("tokenizer")
    if name:
        kwargs = options.get("tokenizer_kwargs") or {}
        return str(name), lambda: _load(str(name), kwargs)
    if options.get("dataset", "synthetic") == "synthetic":
        return "the synthetic dataset's tokenizer", _synthetic
    return None


def _recorded_data_options(checkpoint: Mapping[str, Any], checkpoint_path: Path) -> Iterator[tuple[str, Mapping]]:
    saved = checkpoint.get("datamodule_hyper_parameters")
    if isinstance(saved, Mapping) and saved:
        yield "the checkpoint's datamodule hyperparameters", saved
    if "_instantiator" not in checkpoint["hyper_parameters"]:  # not a LightningCLI run: no config.yaml of its own
        return
    for config in _cli_configs(checkpoint_path):
        data = _data_section(config, checkpoint["hyper_parameters"])
        if data is not None:
            yield f"the run's config {config}", data
            return


def _cli_configs(checkpoint_path: Path) -> list[Path]:
    """``config.yaml`` files near a checkpoint, newest first.

    A run keeps its config close to its checkpoints: ``<run>/config.yaml`` beside ``<run>/checkpoints/``, or
    ``<root>/logs/version_N/config.yaml`` beside ``<root>/checkpoints/``.
    """
    folder = checkpoint_path.resolve().parent
    found: set[Path] = set()
    for root in (folder, folder.parent):
        for pattern in (CLI_CONFIG_FILE, f"*/{CLI_CONFIG_FILE}", f"*/*/{CLI_CONFIG_FILE}"):
            found.update(path for path in root.glob(pattern) if path.is_file())
    return sorted(found, key=lambda path: path.stat().st_mtime, reverse=True)


def _data_section(config: Path, hparams: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``data`` options of a CLI config whose ``model`` section describes the policy of ``hparams``."""
    try:
        values = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(values, dict):
        return None
    model, data = _init_args(values.get("model")), _init_args(values.get("data"))
    if model is None or data is None or not _same_policy(model, hparams):
        return None
    return data


def _init_args(section: Any) -> Mapping[str, Any] | None:
    if not isinstance(section, Mapping):
        return None
    init_args = section.get("init_args")
    return init_args if isinstance(init_args, Mapping) else section


def _same_policy(model: Mapping[str, Any], hparams: Mapping[str, Any]) -> bool:
    """Whether a config's ``model`` options are those of the checkpoint's hyperparameters.

    The options that define the policy and its loss (:data:`_RUN_OPTIONS`) must agree. The checkpoint's
    ``model_config`` also holds the values resolved from the tokenizer (vocabulary size, special ids), so the
    config's entries must be a subset of it.
    """
    if any(model.get(key) != hparams.get(key) for key in _RUN_OPTIONS if key in model or key in hparams):
        return False
    config, recorded = model.get("model_config"), hparams.get("model_config")
    if config is None or recorded is None:
        return config is None and recorded is None
    return isinstance(config, Mapping) and all(recorded.get(key) == value for key, value in config.items())
