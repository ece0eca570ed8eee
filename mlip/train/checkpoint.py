"""Lightning writes checkpoints through :class:`AtomicCheckpointIO` (reading them, and the potential
they hold, is :mod:`mlip.export`'s: it needs no Lightning)."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from mlip.export import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same directory, then renames it over the
    target (``os.replace``): a run killed during a write leaves the previous file intact."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)


__all__ = ["AtomicCheckpointIO"]
