"""Checkpoint files: atomic writes, and rebuilding a potential from a checkpoint without Hydra."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mlip.export import MODEL_CLASSES, atomic_torch_save, build_potential
from mlip.nn.potential import Potential


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same directory, then renames it over the
    target (``os.replace``): a run killed during a write leaves the previous file intact."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be read."""


def remove_partial_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary files left by a run killed while writing a checkpoint or a model file
    (``.NAME.ckpt.*.tmp``, ``.NAME.pt.*.tmp``) in ``directory``; returns them."""
    directory = Path(directory)
    leftovers = (
        sorted([*directory.glob(".*.ckpt.*.tmp"), *directory.glob(".*.pt.*.tmp")])
        if directory.is_dir()
        else []
    )
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint, loaded with ``weights_only=True`` on the CPU; raises
    :class:`CheckpointError` naming the file if it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{path}: unreadable checkpoint (corrupt or truncated): move it away, or rerun with "
            "resume=false to start the run over"
        ) from None


def potential_from_checkpoint(checkpoint: dict[str, Any], ema: bool = True) -> Potential:
    """The :class:`Potential` of a training checkpoint (its EMA weights where present and ``ema``).

    Uses only the plain ``checkpoint["mlip"]`` entry (model class, constructor config, cutoff,
    species, dtype) and the state dict: no Hydra config and no pickled code.
    """
    info = checkpoint.get("mlip")
    if not isinstance(info, dict) or info.get("model_class") not in MODEL_CLASSES:
        raise ValueError("not an mlip training checkpoint (no 'mlip' entry with a known model)")
    potential = build_potential(
        info["model_class"], info["model_config"], info["cutoff"], info["species"], info["dtype"]
    )
    state = checkpoint["state_dict"]
    prefix = (
        "ema.module." if ema and any(k.startswith("ema.module.") for k in state) else "potential."
    )
    potential.load_state_dict(
        {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    )
    return potential.eval()


__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "load_checkpoint",
    "potential_from_checkpoint",
    "remove_partial_checkpoints",
]
