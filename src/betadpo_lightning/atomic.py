"""Atomic writes: every file (and model folder) the library writes is replaced whole, or not at all.

A file is written to a temporary file in its own folder (so the final rename never crosses filesystems), flushed and
``fsync``-ed, renamed over the destination with :func:`os.replace`, and the folder is ``fsync``-ed so the rename
itself survives a power loss. On any failure (an exception in the serializer, a full disk, Ctrl-C) the temporary
file is removed and the previous file, if any, is left as it was. A process killed outright (``SIGKILL``) cannot
clean up: its temporary file is removed by the next write of the same destination on the same machine.

A folder (a ``save_pretrained`` model) is written into a temporary sibling folder that replaces the destination once
complete (:func:`atomic_directory`). For example ``atomic_write(path, lambda file: torch.save(state, file))``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_directory", "atomic_write", "atomic_write_bytes", "atomic_write_text", "umask"]

_SUFFIX = ".tmp"


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tag() -> str:
    """``host-pid``: who owns a temporary file, so that a later write can tell a dead writer's leftovers."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def _alive(pid: int) -> bool:
    if sys.platform == "win32":  # os.kill would terminate it there: assume it is alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True


def _remove_leftovers(path: Path) -> None:
    """Remove temporary siblings of ``path`` that a killed writer on this machine left behind."""
    host = socket.gethostname().replace(".", "_")
    for leftover in path.parent.glob(f".{path.name}.{host}-*{_SUFFIX}"):
        pid = leftover.name[len(f".{path.name}.{host}-") :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some filesystems cannot ``fsync`` a folder)."""
    if sys.platform == "win32":
        return
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` atomically: ``write(file)`` fills a temporary file that then replaces ``path``.

    Args:
        path: the destination; its folder is created if missing. An existing file keeps its permissions.
        write: called once with the temporary file open for binary writing (e.g. ``lambda f: torch.save(obj, f)``).

    Raises:
        Whatever ``write`` or the filesystem raises; ``path`` is then unchanged and no temporary file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.{_tag()}.", suffix=_SUFFIX, dir=path.parent)
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~umask()
        os.chmod(temporary, mode)  # mkstemp's file is private; the destination gets the usual permissions
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_folder(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda file: file.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`); newlines are written as given."""
    atomic_write_bytes(path, text.encode(encoding))


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as file:
                os.fsync(file.fileno())
        _fsync_folder(Path(root))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], replace: bool = True) -> Iterator[Path]:
    """A temporary sibling folder to fill; on success it replaces the folder ``path`` (created if missing).

    Every file in it is ``fsync``-ed first. An existing ``path`` is moved aside, the new folder renamed into place,
    and the old one deleted, so a failure at any point leaves the old folder or the new one, never a mix.

    Args:
        path: the destination folder.
        replace: replace an existing ``path``; ``False``: keep it and drop the new folder (a concurrent writer of
            the same content finished first).

    Yields:
        The temporary folder to write into (same filesystem as ``path``).

    Raises:
        Whatever the body raises; ``path`` is then unchanged and the temporary folder removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_tag()}.", suffix=_SUFFIX, dir=path.parent))
    try:
        staging.chmod(0o777 & ~umask())  # mkdtemp's folder is private; the result gets the usual permissions
        yield staging
        _fsync_tree(staging)
        if path.exists() and not replace:
            shutil.rmtree(staging, ignore_errors=True)
        elif path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_tag()}.old.", suffix=_SUFFIX, dir=path.parent))
            os.replace(path, old)  # onto the empty folder just made: the old copy is kept until the new is in place
            try:
                os.replace(staging, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(staging, path)
            except OSError:
                if replace or not path.is_dir():  # not a concurrent writer that finished first
                    raise
                shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_folder(path.parent)
