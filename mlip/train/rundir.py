"""The run directory: one live ``mlip train`` at a time, and the config it runs.

The lock is an ``flock`` on ``<run_dir>/.lock``: the kernel drops it when its process ends, however
it ends (SIGKILL included), so a killed run never leaves a directory stuck. Only the first process
of a run takes it (DDP's other processes run inside the same run).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


class RunDirectoryInUse(RuntimeError):
    """Another live process is training in the same run directory."""


def is_first_process() -> bool:
    """False in the processes a DDP launcher starts besides the first (local and node rank 0)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


@contextmanager
def locked_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; raises :class:`RunDirectoryInUse` naming the process
    that holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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


def record_config(cfg: DictConfig, run_dir: Path) -> None:
    """Write the composed config (and, under ``mlip train``, the command-line overrides) to
    ``run_dir/.hydra/`` (Hydra's own copy is off, so that it is written only under the lock)."""
    from hydra.core.hydra_config import HydraConfig

    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    if HydraConfig.initialized():
        OmegaConf.save(HydraConfig.get().overrides.task, folder / "overrides.yaml")


__all__ = ["RunDirectoryInUse", "is_first_process", "locked_run_dir", "record_config"]
