"""Naming the option behind a command-line error: parse errors of ``jsonargparse``, and values refused by a class.

* :func:`parse_error`: an unknown option gets the closest valid ones (``did you mean --model.beta?``), a value of the
  wrong type the option and the type expected, instead of the usage dump.
* :func:`config_error`: a value refused when the classes are built (``Expected `rho` in [0, 1), got 1.5.``) gets
  the option it came from (``--dynamic_beta.controller.init_args.rho``), found from the class that raised and the
  parameter its message names.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from jsonargparse import Namespace

from betadpo_lightning.commands.cli_errors import CLIError

__all__ = ["config_error", "option_names", "parse_error"]

_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value:",
    "Expected a <class 'NoneType'>",
)


def option_names(parser: Any) -> list[str]:
    """Every ``--option`` of ``parser``: its own options and the nested keys of its defaults (subclass arguments).

    Args:
        parser: a ``jsonargparse.ArgumentParser``.

    Returns:
        Sorted option strings, with both ``x.init_args.y`` and its short form ``x.y``.
    """
    names = {s for s in parser._option_string_actions if s.startswith("--") and not s.endswith(".help")}
    for key in parser.get_defaults().keys():  # noqa: SIM118 (a Namespace: iterating it fails)
        names.add(f"--{key}")
        names.add(f"--{key.replace('.init_args.', '.')}")
    return sorted(names)


def _suggest(option: str, candidates: Iterable[str], prefix: str = "") -> str | None:
    matches = difflib.get_close_matches(option, list(candidates), n=3, cutoff=0.6)
    return f"did you mean {' or '.join(prefix + match for match in matches)}?" if matches else None


def _renamed_hint(option: str, renamed: Mapping[str, str]) -> str | None:
    """What to use instead of ``option`` (``--optimizer.lr`` or ``optimizer.class_path``), if it is renamed."""
    bare = option.lstrip("-")
    old = next((old for old in renamed if bare == old.lstrip("-") or bare.startswith(f"{old.lstrip('-')}.")), None)
    return f"{option}: {renamed[old]}" if old else None


def _unknown_options(options: list[str], candidates: list[str], renamed: Mapping[str, str]) -> CLIError:
    """``options`` (as typed: ``--x.y`` on the command line, ``x.y`` in a config file) are unknown."""
    hints = []
    for option in options:
        dashes = "--" if option.startswith("--") else ""
        pool = [c if dashes else c.removeprefix("--") for c in candidates]
        hint = _renamed_hint(option, renamed) or _suggest(option, pool)
        if hint:
            hints.append(hint if len(options) == 1 or hint.startswith(option) else f"{option}: {hint}")
    plural = "s" if len(options) > 1 else ""
    hints.append("List the options with --help; show the config with --print_config.")
    return CLIError(f"unknown option{plural} {' '.join(options)}", hints, exit_code=2)


def _tidy(text: str) -> str:
    """``jsonargparse``'s wording made short: plain type names, ``one of``, ``got``."""
    text = re.sub(r"<class '(?:builtins\.)?([\w.]+)'>", r"\1", text)
    text = re.sub(r"typing\.Literal\[(.*?)\]", r"one of \1", text)
    text = text.replace("Expected a one of", "expected one of").replace("Expected a ", "expected a ")
    text = re.sub(r"\b([Ee]xpected) a (?=[aeiou])", r"\1 an ", text)
    return re.sub(r"\. Got value: (.*)$", r", got '\1'", text, flags=re.S)


def _details(body: str) -> list[str]:
    lines = [line.strip().removeprefix("- ").strip() for line in body.splitlines()]
    return [line for line in lines if line and not line.startswith(_NOISE)]


def _class_parameters(class_path: str) -> list[str]:
    module, _, name = class_path.rpartition(".")
    try:
        signature = inspect.signature(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in signature.parameters.values() if p.kind in kinds]


def parse_error(message: str, candidates: list[str], renamed: Mapping[str, str] | None = None) -> CLIError:
    """A short :class:`CLIError` for a ``jsonargparse`` parse error message.

    Args:
        message: the ``ArgumentError``'s message.
        candidates: the valid ``--options`` (:func:`option_names`), for suggestions.
        renamed: options that do not exist here, with what to use instead (e.g. ``--optimizer``).

    Returns:
        The error to report (exit code 2).
    """
    renamed = renamed or {}
    if match := re.match(r"unrecognized arguments: (.*)", message, re.S):
        options = [token.split("=", 1)[0] for token in match.group(1).split() if token.startswith("--")]
        return _unknown_options(options or [match.group(1).strip()], candidates, renamed)
    if match := re.search(r"does not accept option '([^']+)'", message):  # a key of a config file
        return _unknown_options([match.group(1)], candidates, renamed)
    if match := re.match(r'Parser key "([^"]+)":\s*(.*)', message, re.S):
        key, body = match.groups()
        if rejected := re.search(r"Option '([^']+)' is not accepted", body):
            class_path = re.search(r"class_path[= ]'([\w.]+)'", body)
            names = _class_parameters(class_path.group(1)) if class_path else []
            hint = _suggest(rejected.group(1), names, prefix=f"{key}.")
            hints = [hint] if hint else []
            if names:
                hints.append(f"{key} takes: {', '.join(names)}")
            return CLIError(f"unknown option {key}.{rejected.group(1)}", hints, exit_code=2)
        details = _details(body)
        hints = [_tidy(detail) for detail in details[1:2]]
        return CLIError(f"{key}: {_tidy(details[0]) if details else body.strip()}", hints, exit_code=2)
    first, *rest = message.strip().splitlines() or [""]
    return CLIError(_tidy(first), [line.strip() for line in rest[:2]], exit_code=2)


def _root_cause(error: BaseException) -> BaseException:
    """The error a class raised, inside the wrappers that ``jsonargparse`` adds around it."""
    while error.__cause__ is not None:
        frames = inspect.getinnerframes(error.__traceback__, context=0) if error.__traceback__ else []
        if frames and "jsonargparse" not in frames[-1].filename:
            break
        error = error.__cause__
    return error


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every mapping of a parsed config with its dotted path (``jsonargparse`` namespaces, dicts, lists)."""
    items = vars(node).items() if isinstance(node, Namespace) else node.items() if isinstance(node, Mapping) else None
    if items is not None:
        yield path, node
        for key, value in items:
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


def _get(node: Any, key: str) -> Any:
    return node.get(key) if isinstance(node, Mapping) else getattr(node, key, None)


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _section_of(cls: type, config: Any, groups: Mapping[str, type]) -> tuple[str, list[str]] | None:
    """The option prefix of the arguments of ``cls`` in ``config``, and their names."""
    for key, group_class in groups.items():
        if cls is group_class:
            section = _get(config, key)
            return key, list(vars(section)) if isinstance(section, Namespace) else []
    for path, node in _walk(config):
        class_path = _get(node, "class_path")
        if isinstance(class_path, str) and _import(class_path) is cls:
            init_args = _get(node, "init_args")
            names = list(vars(init_args)) if isinstance(init_args, Namespace) else list(init_args or {})
            return f"{path}.init_args", names
    return None


def _raising_sections(error: BaseException, config: Any, groups: Mapping[str, type]) -> Iterator[tuple[str, list]]:
    """The config sections of the objects whose ``__init__`` raised ``error``, innermost first."""
    frames = inspect.getinnerframes(error.__traceback__, context=0) if error.__traceback__ else []
    for frame in reversed(frames):
        owner = frame.frame.f_locals.get("self") if frame.function == "__init__" else None
        if owner is not None and (section := _section_of(type(owner), config, groups)) is not None:
            yield section


def _named_parameter(message: str, names: list[str]) -> str | None:
    """The parameter that ``message`` names first (as a word, in backticks or quotes or bare); the longest on a tie."""
    found = []
    for name in names:
        if match := re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message):
            found.append((match.start(), -len(name), name))
    return min(found)[2] if found else None


def config_error(
    error: BaseException, config: Any, groups: Mapping[str, type], links: Mapping[str, str] | None = None
) -> CLIError:
    """A short :class:`CLIError` naming the option whose value a class refused while it was built.

    Args:
        error: what instantiating the classes raised.
        config: the parsed config of the subcommand.
        groups: the top-level sections and their classes (``{"model": PreferenceModule, ...}``).
        links: link targets and the option they come from (``{"dynamic_beta.controller.init_args.beta":
            "model.beta"}``): the source is named.

    Returns:
        The error to report.
    """
    cause = _root_cause(error)
    message = str(cause).strip() or type(cause).__name__
    for section, names in _raising_sections(cause, config, groups):
        parameter = _named_parameter(message, names)
        option = f"{section}.{parameter}" if parameter else section
        source = (links or {}).get(option)
        hints = [f"({source} is passed on to {option})"] if source else []
        return CLIError(f"{source or option}: {message}", hints)
    return CLIError(f"invalid configuration: {type(cause).__name__}: {message}")
