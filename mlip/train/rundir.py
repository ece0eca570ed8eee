"""The run directory: one live ``mlip train`` at a time, and the config it runs.

The lock is an ``flock`` on ``<run_dir>/.lock``: the kernel drops it when its process ends, however
it ends (SIGKILL included), so a killed run never leaves a directory stuck. Only the first process
of a run takes it (DDP's other processes run inside the same run).
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mlip.errors import RunDirectoryError, RunDirectoryInUse
from mlip.outputs import probe_dir


def is_first_process() -> bool:
    """False in the processes a DDP launcher starts besides the first (local and node rank 0)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


@contextmanager
def locked_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (creating the directory); raises
    :class:`RunDirectoryInUse` naming the process that holds it, or :class:`RunDirectoryError` if
    the directory cannot be written."""
    path = run_dir / ".lock"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunDirectoryError(
            f"run directory {run_dir}: cannot write there: {err.strerror or err}"
        ) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirectoryInUse(
            f"run directory {run_dir} is in use by another mlip train (pid {holder}): wait for it "
            "to finish, or give this run another run_name=... (or run_dir=...)"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


class CheckRunDirectory(Callback):
    """Hydra callback of ``mlip train`` (``hydra.callbacks`` in ``conf/train.yaml``): a run directory
    that cannot be created or written is one line and exit status 2, before Hydra creates it (and
    opens ``train.log`` there) with a traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(OmegaConf.select(config, "hydra.run.dir"))
        try:
            probe_dir(run_dir)
        except OSError as err:
            reason = err.strerror or err
            print(
                f"mlip train: error: run directory {run_dir}: cannot write there: {reason}",
                file=sys.stderr,
            )
            raise SystemExit(2) from None


def record_config(cfg: DictConfig, run_dir: Path) -> None:
    """Write the composed config (and, under ``mlip train``, the command-line overrides) to
    ``run_dir/.hydra/`` (Hydra's own copy is off, so that it is written only under the lock)."""
    from hydra.core.hydra_config import HydraConfig

    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    if HydraConfig.initialized():
        OmegaConf.save(HydraConfig.get().overrides.task, folder / "overrides.yaml")


__all__ = [
    "CheckRunDirectory",
    "RunDirectoryError",
    "RunDirectoryInUse",
    "is_first_process",
    "locked_run_dir",
    "record_config",
]
