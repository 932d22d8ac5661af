"""The reference cache's files, written atomically and checked when read: a damaged or edited cache is never used.

The cache folder holds one ``<split>-<rank>-of-<world>.pt`` part per split and rank (``rows (n,)``, ``logps (n, 2)``
and, when cached, ``entropy (n, 2)``) and ``meta.json``: the key the values are valid for and a SHA-256 checksum of
each part's values (:func:`values_checksum`). :func:`read_meta` and :func:`read_part` refuse, with a
:class:`DamagedCacheError` naming the file and telling to delete the folder, a ``meta.json`` that is not valid JSON or
has no checksums, a part that is missing, cannot be read (truncated) or whose values do not match their checksum
(values scaled, chosen and rejected swapped, bytes flipped).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from betadpo_lightning.atomic import atomic_write, atomic_write_text
from betadpo_lightning.models.policy_checkpoint import first_line

__all__ = ["DamagedCacheError", "read_meta", "read_part", "values_checksum", "write_meta", "write_part"]


class DamagedCacheError(RuntimeError):
    """A reference cache file that is missing, unreadable, or whose values do not match their recorded checksum."""

    def __init__(self, file: Path, problem: str, folder: Path) -> None:
        super().__init__(
            f"The reference cache file {file} {problem}; delete the folder {folder} to compute the cache again."
        )


def values_checksum(part: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a part's tensors: each one's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(part):
        tensor = part[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_part(file: Path, part: dict[str, torch.Tensor]) -> None:
    """Write one part atomically."""
    atomic_write(file, lambda handle: torch.save(part, handle))


def _load(file: Path, folder: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise DamagedCacheError(file, "is missing", folder)
    try:
        part = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged zip: runtime, pickle, EOF errors
        raise DamagedCacheError(file, f"cannot be read ({first_line(error)})", folder) from None
    if not isinstance(part, dict) or not all(isinstance(value, torch.Tensor) for value in part.values()):
        raise DamagedCacheError(file, "does not hold the cache's tensors", folder)
    return part


def write_meta(meta_file: Path, meta: dict[str, Any], parts: list[Path]) -> None:
    """Write ``meta.json`` atomically, with the checksum of every part (read back from disk) under ``checksums``."""
    folder = meta_file.parent
    checksums = {part.name: values_checksum(_load(part, folder)) for part in parts}
    atomic_write_text(meta_file, json.dumps({**meta, "checksums": checksums}, indent=1, default=str))


def read_meta(meta_file: Path) -> dict[str, Any]:
    """``meta.json``, checked to be valid JSON with checksums.

    Raises:
        DamagedCacheError: naming the file, for a file that is not valid JSON (e.g. cut short) or has no checksums.
    """
    folder = meta_file.parent
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedCacheError(meta_file, f"is damaged (not valid JSON: {error})", folder) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("key"), dict):
        raise DamagedCacheError(meta_file, "is damaged (no cache key in it)", folder)
    if not isinstance(meta.get("checksums"), dict):
        raise DamagedCacheError(meta_file, "records no checksums of the cached values (an older cache)", folder)
    return meta


def read_part(file: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One part, checked against its checksum in ``meta``.

    Raises:
        DamagedCacheError: naming the part, when it is missing, unreadable, or its values do not match.
    """
    folder = file.parent
    part = _load(file, folder)
    expected = meta["checksums"].get(file.name)
    if expected is None:
        raise DamagedCacheError(file, "has no checksum in meta.json", folder)
    if values_checksum(part) != expected:
        raise DamagedCacheError(file, "does not match its checksum in meta.json (damaged or edited)", folder)
    return part
