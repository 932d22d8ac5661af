"""Paths a command line names, checked before the heavy libraries load: a mistyped path is reported at once.

Loading torch, Lightning and transformers takes seconds (tens on a small machine) before a ``LightningCLI`` reads
its first option. :func:`exit_on_missing_paths` runs first (in ``cli.py`` and in the ``betadpo`` and ``betadpo-sft``
scripts), with the standard library and PyYAML only, and ends the process with a short message when a path the
command names does not exist:

* a ``--config`` / ``-c`` file (exit status 2, as for any other command-line mistake);
* a local data file: ``data.dataset`` that looks like a file (a data suffix such as ``.jsonl``, or starting with
  ``./``, ``../``, ``/`` or ``~``), the ``data.data_files`` of a builder (``json``, ``csv``, ``parquet``, ...; not
  of a Hub dataset, whose ``data_files`` are paths inside the Hub repository), and a ``data.chat_template`` file
  (exit status 1, as for other data errors).

Values are read as ``LightningCLI`` reads them: config files and ``--data.<key>`` options in order, a later one
overriding an earlier one; relative paths are relative to the working directory. Anything this quick reading cannot
decide (an inline YAML config, a glob, a URL, a YAML file that does not parse) is left to the command line itself,
which reports it in the usual way.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

__all__ = ["MissingPath", "betadpo", "betadpo_sft", "exit_on_missing_paths", "find_missing_path"]

CONFIG_FLAGS = ("--config", "-c")
SUBCOMMANDS = ("fit", "validate", "test")
DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
"""Suffixes of the local files a dataset is read from (optionally followed by ``.gz``)."""
FILE_BUILDERS = frozenset({"json", "csv", "parquet", "arrow", "text", "pandas"})
"""``datasets`` builders whose ``data_files`` are local paths (those of a Hub dataset are inside its repository)."""
_BOOL_WORDS = frozenset({"auto", "true", "false", "yes", "no", "on", "off", "null", "none"})


@dataclass(frozen=True)
class MissingPath:
    """A path named on the command line or in a config that does not exist.

    Attributes:
        option: the option naming it (``--config``, ``data.dataset``, ...).
        path: the path as written.
        hints: lines saying what to do (a close name that exists, where relative paths are looked up).
        exit_code: 2 for a command-line file, 1 for a data file.
        problem: what is wrong with it.
    """

    option: str
    path: str
    hints: tuple[str, ...]
    exit_code: int
    problem: str = "no such file"

    def message(self) -> str:
        """The lines printed: ``error: ...`` and the hints."""
        lines = [f"error: {self.option}: {self.problem} '{self.path}'", *(f"  {hint}" for hint in self.hints)]
        return "\n".join(lines)


def _values(argv: Sequence[str]) -> Iterator[tuple[str, str]]:
    """``(option, value)`` of every ``--option value`` / ``--option=value`` in order (flags without a value skipped)."""
    index = 0
    while index < len(argv):
        word = argv[index]
        index += 1
        if not word.startswith("-"):
            continue
        if "=" in word:
            option, _, value = word.partition("=")
            yield option, value
        elif index < len(argv) and not argv[index].startswith("-"):
            yield word, argv[index]
            index += 1


def _load_yaml(text: str) -> Any:
    try:
        import yaml

        return yaml.safe_load(text)
    except Exception:  # a YAML mistake is for the command line to report, in its own words
        return None


def _data_section(config: Any, subcommand: str | None) -> Mapping[str, Any]:
    """The ``data`` options of a parsed config (under the subcommand's key for a config given before it)."""
    if not isinstance(config, Mapping):
        return {}
    if subcommand is not None and isinstance(config.get(subcommand), Mapping):
        config = config[subcommand]
    data = config.get("data")
    if isinstance(data, Mapping) and isinstance(data.get("init_args"), Mapping):
        data = data["init_args"]
    return data if isinstance(data, Mapping) else {}


def _close_names(path: Path) -> list[str]:
    folder = path.parent
    if not folder.is_dir():
        return []
    names = difflib.get_close_matches(path.name, [child.name for child in folder.iterdir()], n=2)
    return [str(folder / name) for name in names]


def _missing(option: str, value: str, exit_code: int) -> MissingPath | None:
    path = Path(value).expanduser()
    if path.exists():
        return None
    hints = []
    close = _close_names(path)
    if close:
        hints.append("did you mean " + " or ".join(f"'{name}'" for name in close) + "?")
    elif not path.parent.is_dir():
        hints.append(f"the folder '{path.parent}' does not exist either")
    if not path.is_absolute():
        hints.append(f"relative paths are looked up in the working directory, {Path.cwd()}")
    return MissingPath(option, value, tuple(hints), exit_code)


def _looks_local(dataset: str) -> bool:
    name = dataset.lower().removesuffix(".gz")
    return name.endswith(DATA_SUFFIXES) or dataset.startswith(("./", "../", "/", "~", ".\\", "..\\"))


def _is_plain_path(value: str) -> bool:
    return "://" not in value and not any(char in value for char in "*?[")


def _data_files(value: Any) -> list[str]:
    """The file names of a ``data_files`` value: a name, a list of names, or a mapping of split to name(s)."""
    if isinstance(value, str):
        parsed = _load_yaml(value) if value.lstrip().startswith(("[", "{")) else value
        value = parsed if parsed is not None else value
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [name for item in value.values() for name in _data_files(item)]
    if isinstance(value, list | tuple):
        return [name for item in value for name in _data_files(item)]
    return []


def _check_data(data: Mapping[str, Any]) -> MissingPath | None:
    dataset = data.get("dataset")
    if isinstance(dataset, str) and _looks_local(dataset) and _is_plain_path(dataset):
        missing = _missing("data.dataset", dataset, 1)
        if missing is not None:
            return missing
    if isinstance(dataset, str) and dataset in FILE_BUILDERS:
        for name in _data_files(data.get("data_files")):
            missing = _missing("data.data_files", name, 1) if _is_plain_path(name) else None
            if missing is not None:
                return missing
    template = data.get("chat_template")
    if isinstance(template, str) and template.strip().lower() not in _BOOL_WORDS and "{" not in template:
        return _missing("data.chat_template", template, 1)
    return None


def find_missing_path(argv: Sequence[str]) -> MissingPath | None:
    """The first ``--config`` file or local data path of ``argv`` that does not exist (``None``: none found).

    Args:
        argv: the command line after the program name (``fit --config c.yaml --data.dataset pairs.jsonl``).

    Returns:
        The missing path, or ``None``.
    """
    subcommand = next((word for word in argv if word in SUBCOMMANDS), None)
    data: dict[str, Any] = {}
    for option, value in _values(argv):
        if option in CONFIG_FLAGS:
            if "\n" in value or value.lstrip().startswith("{"):
                continue  # an inline YAML config: the command line reads it
            path = Path(value).expanduser()
            if path.is_dir():
                return MissingPath("--config", value, ("give the YAML file of the run",), 2, "a folder, not a file:")
            missing = _missing("--config", value, 2)
            if missing is not None:
                return missing
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # the command line reports an unreadable file in its own words
            data.update(_data_section(_load_yaml(text), subcommand))
        elif option.startswith("--data.") and option.count(".") == 1:
            data[option.removeprefix("--data.")] = value
    return _check_data(data)


def exit_on_missing_paths(argv: Sequence[str] | None = None, stream: TextIO | None = None) -> None:
    """End the process with a short message when :func:`find_missing_path` finds a missing path; else return.

    Args:
        argv: the arguments (``None``: ``sys.argv[1:]``).
        stream: where to print (standard error by default).

    Raises:
        SystemExit: with status 2 for a missing ``--config`` file, 1 for a missing data file.
    """
    missing = find_missing_path(sys.argv[1:] if argv is None else argv)
    if missing is None:
        return
    print(missing.message(), file=stream if stream is not None else sys.stderr, flush=True)
    raise SystemExit(missing.exit_code)


def betadpo() -> int:
    """The ``betadpo`` console script: the path checks, then the preference command line; exit code 0 on success."""
    exit_on_missing_paths()
    from betadpo_lightning.commands.cli import console_main

    return console_main()


def betadpo_sft() -> int:
    """The ``betadpo-sft`` console script: the path checks, then the supervised warm start's command line."""
    exit_on_missing_paths()
    from betadpo_lightning.commands.sft_cli import console_main

    return console_main()
