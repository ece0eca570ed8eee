"""One module per `mlip` sub-command: each has `main(argv) -> exit status`."""

from __future__ import annotations

import argparse
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
    :class:`OutputError` naming ``option``. Tried by creating and removing a temporary file."""
    path = Path(path)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{existing}: is a file, not a folder ({option})")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise OutputError(
            f"{path}: cannot create files there ({option}): {err.strerror or err}"
        ) from err
    return path


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options every simulation command shares: which model file and where it runs."""
    p.add_argument("--model", help="model file (default: the bundled default model)")
    p.add_argument("--device", default="cpu", help="torch device (cpu)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default: the model's")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
