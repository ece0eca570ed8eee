"""The deployment edge: model files (``save_model``, ``load_model``), atomic writes, and the
potential of a training checkpoint (``load_checkpoint``, ``potential_from_checkpoint``), all
without Lightning or Hydra.

The file is a ``torch.save`` of plain containers (no pickled classes): the model's class name and
constructor config, the potential's cutoff, species, E0s, scale and shift (in its state dict), the
weights, dtype, units, the mlip version and free-form JSON-able metadata (training data, errors).
It loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mlip import __version__, keys
from mlip.errors import CheckpointError, ModelFileError
from mlip.nn.config import default_dtype
from mlip.nn.potential import Potential

FORMAT = "mlip-model"
# 2: Facet's last layer holds scalar outputs only (format 1 files are upgraded); 3: Facet's norm
# has a floor from the scalars under the l > 0 features' RMS (vector_floor; formats 1, 2 load with 0)
FORMAT_VERSION = 3
# model classes a file may name; nothing outside this table is ever imported by load_model
MODEL_CLASSES = {"Facet": "mlip.nn.facet", "MACE": "mlip.nn.mace"}


def save_model(potential: Potential, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``potential`` to ``path`` atomically (a crash never leaves a half-written file)."""
    model = potential.model
    name = type(model).__name__
    if name not in MODEL_CLASSES or not hasattr(model, "config"):
        raise TypeError(f"cannot export a {name}: known model classes are {sorted(MODEL_CLASSES)}")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mlip_version": __version__,
        "model_class": name,
        "model_config": model.config,
        "cutoff": potential.cutoff,
        "species": potential.species.tolist(),
        "dtype": str(potential.e0.dtype).removeprefix("torch."),
        "units": keys.UNITS,
        "metadata": metadata or {},
        "state_dict": {k: v.detach().cpu() for k, v in potential.state_dict().items()},
    }
    return atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`, synced to disk before the rename."""

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, save)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """``write(tmp)`` to a temporary file in the target's directory, then rename it over ``path``:
    a process killed during the write leaves the previous file intact (and a ``.tmp`` at worst).
    The file gets the permissions of a plain ``open`` (``0o666`` less the umask), not ``mkstemp``'s
    owner-only ``0o600``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw contents of a model file (or a bundled model's, by name: ``"default"``, ``"si"``),
    validated; raises :class:`ModelFileError`."""
    from mlip.models import model_file

    path = model_file(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types for truncated or foreign files
        # torch's own message suggests weights_only=False, i.e. running the file's code: never
        raise ModelFileError(
            f"{path}: not an mlip model file (the safe loader cannot read it: corrupt, truncated, "
            "or another kind of file)"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an mlip model file")
    version = payload.get("format_version")
    if not isinstance(version, int):
        raise ModelFileError(f"{path}: not a valid mlip model file (no format_version)")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written by mlip {payload.get('mlip_version')} in model-file format {version}; "
            f"this mlip {__version__} reads format {FORMAT_VERSION}. Upgrade mlip."
        )
    if payload.get("model_class") not in MODEL_CLASSES:
        raise ModelFileError(f"{path}: unknown model class {payload.get('model_class')!r}")
    problem = _payload_problem(payload)
    if problem:
        raise ModelFileError(f"{path}: not a valid mlip model file ({problem})")
    return payload


def _payload_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with a model file's fields, or None."""
    species, cutoff = payload.get("species"), payload.get("cutoff")
    if not isinstance(payload.get("model_config"), dict):
        return "model_config is not a mapping"
    if not isinstance(payload.get("state_dict"), dict):
        return "state_dict is not a mapping"
    if payload.get("dtype") not in ("float32", "float64"):
        return f"dtype {payload.get('dtype')!r} is neither float32 nor float64"
    if (
        not isinstance(species, list)
        or not species
        or not all(isinstance(z, int) and 1 <= z <= 118 for z in species)
        or len(set(species)) != len(species)
    ):
        return f"species {species!r} are not distinct atomic numbers 1-118"
    if not isinstance(cutoff, int | float) or not math.isfinite(cutoff) or cutoff <= 0:
        return f"cutoff {cutoff!r} is not a positive number of Å"
    return None


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
    config = payload["model_config"]
    if payload["model_class"] == "Facet":
        config = {"vector_floor": 0.0, **config}  # formats 1 and 2 were trained this way
        if config["vector_floor"] == 0 and config.get("num_layers", 3) > 1:
            warnings.warn(
                f"{path}: this Facet (mlip {payload.get('mlip_version')}, model-file format "
                f"{payload['format_version']}) divides its l > 0 features by their own RMS, so "
                "its energy is not smooth at perfect crystals and symmetric molecules (force "
                "constants of thousands of eV/Å² there: phonons and relaxations are wrong). "
                "Retrain it with this mlip (model.vector_floor > 0, the default).",
                stacklevel=2,
            )
    try:
        potential = build_potential(
            payload["model_class"], config, payload["cutoff"], payload["species"], payload["dtype"]
        )
    except (TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise ModelFileError(
            f"{path}: its model_config does not build a {payload['model_class']}: {exc}"
        ) from None
    state = payload["state_dict"]
    if payload["format_version"] == 1 and payload["model_class"] == "Facet":
        state = _facet_format1_state(state, potential)
    try:
        potential.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: weights do not fit the stored config: {exc}") from None
    bad = [
        k
        for k, v in potential.state_dict().items()
        if v.is_floating_point() and not v.isfinite().all()
    ]
    if bad:
        raise ModelFileError(
            f"{path}: non-finite (NaN or inf) values in {len(bad)} weight tensor(s), e.g. "
            f"{bad[0]}: the model is unusable; retrain it or export it again from a checkpoint"
        )
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
