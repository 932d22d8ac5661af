"""Loading by hub name: an error that names what could not be found and what it was for, quickly.

A model, tokenizer or dataset named by a hub id (``EleutherAI/pythia-410m``) comes from the local Hugging Face cache
or is downloaded. When it is in neither, ``transformers`` and ``datasets`` raise errors that do not say what the
name was needed for; and with no network (and ``HF_HUB_OFFLINE`` unset) ``huggingface_hub`` first retries every file
for half a minute or more. :func:`hub_errors` turns those failures into one :class:`HubUnavailableError`, and
:func:`hub_unreachable` lets callers load from the cache only (no retries) once the hub is known to be unreachable.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "HubUnavailableError",
    "hub_errors",
    "hub_unreachable",
    "is_hub_name",
    "offline_mode",
    "require_reachable",
]

PROBE_TIMEOUT_S = 5.0
"""Seconds the reachability probe of :func:`hub_unreachable` waits for the hub's answer."""


class HubUnavailableError(OSError):
    """A hub name that could not be loaded: not cached and not downloadable, or not on the hub at all.

    Args:
        name: the name as given.
        role: what it was needed for (``"policy"``, ``"reference model"``, ``"tokenizer"``, ``"dataset"``).
        reason: why it could not be loaded.
        fix: what to do about it.

    Attributes:
        name, role, reason, fix: as given.
    """

    def __init__(self, name: str, role: str, reason: str, fix: str) -> None:
        super().__init__(f"{role} '{name}': {reason}. {fix}")
        self.name, self.role, self.reason, self.fix = name, role, reason, fix

    def __reduce__(self) -> tuple[type[HubUnavailableError], tuple[str, str, str, str]]:
        return (type(self), (self.name, self.role, self.reason, self.fix))


def offline_mode() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids downloads, as ``huggingface_hub`` reads it."""
    from huggingface_hub import is_offline_mode

    return bool(is_offline_mode())


def is_hub_name(name: str) -> bool:
    """Whether ``name`` would be looked up on the hub: it is no existing local path and is a valid repository id.

    Example:
        >>> is_hub_name("EleutherAI/pythia-410m"), is_hub_name("/no/such/folder"), is_hub_name(".")
        (True, False, False)
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if Path(name).expanduser().exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


@functools.cache
def _probe(endpoint: str) -> str | None:
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=PROBE_TIMEOUT_S)
    except Exception as error:  # any failure to get an answer, whatever the HTTP client raises
        return f"{type(error).__name__}: {error}"
    return None


def hub_unreachable() -> str | None:
    """Why the hub cannot be reached (``None`` when it answers), probed once per process with one short request.

    The request goes through ``huggingface_hub``'s own HTTP client, so ``HF_ENDPOINT`` and proxy settings apply.
    Not called in offline mode, where nothing may be requested.
    """
    from huggingface_hub import constants

    return _probe(constants.ENDPOINT)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _explain(error: BaseException, name: str, role: str, unreachable: str | None) -> HubUnavailableError | None:
    """The :class:`HubUnavailableError` that ``error`` (raised while loading ``name``) amounts to, if any."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    causes = list(_chain(error))
    if not is_hub_name(name):
        where = Path(name).expanduser().absolute()
        return HubUnavailableError(name, role, f"no such file or folder ({where})", "Check the path.")
    not_cached = "it is not in the local Hugging Face cache"
    if offline_mode() and any(isinstance(c, LocalEntryNotFoundError | ConnectionError) for c in causes):
        return HubUnavailableError(
            name,
            role,
            f"{not_cached}, and HF_HUB_OFFLINE=1 forbids downloading it",
            "Give a local path, or unset HF_HUB_OFFLINE (with network access) to download it once.",
        )
    if any(isinstance(c, RepositoryNotFoundError) or type(c).__name__ == "DatasetNotFoundError" for c in causes):
        return HubUnavailableError(
            name,
            role,
            "the hub has no such repository, or it is gated or private",
            "Check the name; for a gated or private repository log in (`hf auth login`) and accept its terms.",
        )
    if unreachable or any(isinstance(c, LocalEntryNotFoundError | ConnectionError) for c in causes):
        return _unreachable(name, role, unreachable)
    return None


def _unreachable(name: str, role: str, why: str | None) -> HubUnavailableError:
    from huggingface_hub import constants

    detail = f" ({why})" if why else ""
    return HubUnavailableError(
        name,
        role,
        f"the hub ({constants.ENDPOINT}) cannot be reached{detail} and it is not in the local cache",
        "Check the network or proxy settings, or give a local path; with a cached copy set HF_HUB_OFFLINE=1.",
    )


@contextlib.contextmanager
def hub_errors(name: str | None, role: str) -> Iterator[str | None]:
    """Turn a failure to load ``name`` from the hub into a :class:`HubUnavailableError` naming it and its ``role``.

    Yields why the hub is unreachable when ``name`` is a hub name, offline mode is off and the hub does not answer
    (then load from the cache only, e.g. ``local_files_only=True``, to skip ``huggingface_hub``'s retries), else
    ``None``. Errors of local paths and errors that are not about finding ``name`` pass through unchanged; a
    :class:`HubUnavailableError` about ``name`` raised inside (by a loader that wraps itself) takes this ``role``.

    Args:
        name: the hub name or local path being loaded (``None``: nothing to check).
        role: what it is for, e.g. ``"policy"`` or ``"tokenizer"``.

    Raises:
        HubUnavailableError: when ``name`` is neither a local path nor loadable from the cache or the hub.

    Example:
        >>> try:
        ...     with hub_errors("/no/such/folder", "policy"):
        ...         raise FileNotFoundError("not here")
        ... except HubUnavailableError as error:
        ...     print(error.role, "|", error.reason)
        policy | no such file or folder (/no/such/folder)
    """
    hub = name is not None and is_hub_name(name)
    unreachable = hub_unreachable() if hub and not offline_mode() else None
    try:
        yield unreachable
    except (OSError, ValueError) as error:
        if isinstance(error, HubUnavailableError):
            if error.name != name or error.role == role:
                raise
            # an inner loader's generic role (e.g. "policy" of build_causal_lm): the caller knows what it is for
            raise HubUnavailableError(error.name, role, error.reason, error.fix) from error.__cause__
        if name is None or Path(name).expanduser().exists():
            raise
        explained = _explain(error, name, role, unreachable)
        if explained is None:
            raise
        raise explained from error


def require_reachable(name: str, role: str, unreachable: str | None) -> None:
    """Raise at once for a hub ``name`` while the hub is unreachable (for loaders without a cache-only switch).

    Raises:
        HubUnavailableError: when ``unreachable`` is set.
    """
    if unreachable:
        raise _unreachable(name, role, unreachable)
