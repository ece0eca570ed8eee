"""Output paths checked before the work starts: files and folders this process can write.

Imports nothing of mlip but :mod:`mlip.errors`, so that the commands and the training run's Hydra
callback check their outputs the same way.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mlip.errors import OutputError


def writable_file(path: str | os.PathLike, option: str) -> Path:
    """``path`` as a file this process can write, its folder created; else :class:`OutputError`
    naming ``option`` (e.g. ``"-o"``). Nothing is written to ``path`` itself."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory ({option} takes a file name)")
    writable_dir(path.parent, option)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{path}: exists and is not writable ({option})")
    return path


def writable_dir(path: str | os.PathLike, option: str) -> Path:
    """``path`` as a folder (created if missing) in which this process can create files; else
    :class:`OutputError` naming ``option``. Tried by :func:`probe_dir`."""
    path = Path(path)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{existing}: is a file, not a folder ({option})")
    try:
        probe_dir(path)
    except OSError as err:
        raise OutputError(
            f"{path}: cannot create files there ({option}): {err.strerror or err}"
        ) from err
    return path


def probe_dir(path: Path) -> None:
    """Create folder ``path`` (and its parents) if missing, and a temporary file in it, removed at
    once; raises :class:`OSError` when either cannot be done."""
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
        pass
