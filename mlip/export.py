"""One self-contained model file: ``save_model`` and ``load_model``.

The file is a ``torch.save`` of plain containers (no pickled classes): the model's class name and
constructor config, the potential's cutoff, species, E0s, scale and shift (in its state dict), the
weights, dtype, units, the mlip version and free-form JSON-able metadata (training data, errors).
It loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

import mlip
from mlip.nn.config import default_dtype
from mlip.nn.potential import Potential

FORMAT = "mlip-model"
FORMAT_VERSION = 2  # 2: Facet's last layer holds scalar outputs only (format 1 files are upgraded)
UNITS = {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å³"}
# model classes a file may name; nothing outside this table is ever imported by load_model
MODEL_CLASSES = {"Facet": "mlip.nn.facet", "MACE": "mlip.nn.mace"}


class ModelFileError(ValueError):
    """A model file that is missing, corrupt, truncated or from a newer mlip."""


def save_model(potential: Potential, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``potential`` to ``path`` atomically (a crash never leaves a half-written file)."""
    model = potential.model
    name = type(model).__name__
    if name not in MODEL_CLASSES or not hasattr(model, "config"):
        raise TypeError(f"cannot export a {name}: known model classes are {sorted(MODEL_CLASSES)}")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mlip_version": mlip.__version__,
        "model_class": name,
        "model_config": model.config,
        "cutoff": potential.cutoff,
        "species": potential.species.tolist(),
        "dtype": str(potential.e0.dtype).removeprefix("torch."),
        "units": UNITS,
        "metadata": metadata or {},
        "state_dict": {k: v.detach().cpu() for k, v in potential.state_dict().items()},
    }
    return atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the target's directory, then rename it over ``path``:
    a process killed during the write leaves the previous file intact (and a ``.tmp`` at worst)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw contents of a model file, validated; raises :class:`ModelFileError`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ModelFileError(
            f"{path}: not a readable mlip model file (corrupt or truncated?): {exc}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an mlip model file")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written by mlip {payload.get('mlip_version')} in model-file format {version}; "
            f"this mlip {mlip.__version__} reads format {FORMAT_VERSION}. Upgrade mlip."
        )
    if payload.get("model_class") not in MODEL_CLASSES:
        raise ModelFileError(f"{path}: unknown model class {payload.get('model_class')!r}")
    return payload


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> Potential:
    """Rebuild the :class:`~mlip.nn.potential.Potential` stored in ``path``, in eval mode.

    ``dtype`` defaults to the dtype the model was saved in (``"float32"`` / ``"float64"`` or a
    ``torch.dtype`` select another).
    """
    payload = read_model_file(path)
    potential = build_potential(
        payload["model_class"],
        payload["model_config"],
        payload["cutoff"],
        payload["species"],
        payload["dtype"],
    )
    state = payload["state_dict"]
    if payload["format_version"] == 1 and payload["model_class"] == "Facet":
        state = _facet_format1_state(state, potential)
    try:
        potential.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not fit the stored config: {exc}") from None
    potential.metadata = payload["metadata"]
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return potential.to(device=device, dtype=dtype or potential.e0.dtype).eval()


def _facet_format1_state(state: dict[str, torch.Tensor], potential: Potential) -> dict:
    """A format-1 Facet state dict in the current layout, with the same energies.

    Format 1's last layer also computed ``l > 0`` outputs that nothing read (the readout sees the
    scalars only): their output weights, norm scales and residual gates are dropped, and the last
    grid (smaller for ``poly2``, projecting onto ``l = 0`` alone) is taken from the new model.
    """
    last = potential.model.config["num_layers"] - 1
    fresh = potential.state_dict()
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith(f"model.mixings.{last}.grid."):
            value = fresh[key]
        elif key.startswith(
            (f"model.mixings.{last}.linear_out.weights.", f"model.norms.{last}.scales.")
        ):
            if parts[-1] != "0":
                continue
        elif key.startswith("model.gammas.") and parts[-1] != "0":
            value = value[:last]
        out[key] = value
    return out


def build_potential(
    model_class: str, model_config: dict, cutoff: float, species: list[int], dtype: str
) -> Potential:
    """An untrained :class:`Potential` around ``model_class(**model_config)`` (a name of
    :data:`MODEL_CLASSES`), built in ``dtype`` (``"float32"`` or ``"float64"``); cutoff in Å."""
    module = importlib.import_module(MODEL_CLASSES[model_class])
    cls = getattr(module, model_class)
    with default_dtype(dtype):
        return Potential(cls(**model_config), cutoff, species)
