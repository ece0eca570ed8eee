"""What every reader and pass shares: where files keep labels (:class:`LabelKeys`), one frame's
labels found, checked and made canonical (:func:`labelled`), and the bad-frame policy
(:class:`BadFrames`). Imports nothing else of :mod:`mlip.data`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from mlip.errors import DataError, UnreadableRest

OnError = Literal["raise", "skip"]
LABELS = ("energy", "forces", "stress", "charge", "spin")
"""Canonical label names, the values ``required`` may contain."""

PLAUSIBLE = {"energy": 1e6, "forces": 1e5, "stress": 1e3}
"""Largest |energy| per atom (eV), max |force| (eV/Å) and max |stress component| (eV/Å³) a frame
may have: larger ones are unit or parsing errors, not data."""


@dataclass
class BadFrames:
    """A pass's bad-frame policy and findings: ``"raise"`` raises a bad frame's error, ``"skip"``
    counts it, keeping the first ``keep`` messages, the dataset ``indices`` where known and how
    many are :class:`UnreadableRest` (a file not read past that point)."""

    on_error: OnError = "raise"
    count: int = 0
    messages: list[str] = field(default_factory=list)
    keep: int = 10_000
    indices: list[int] = field(default_factory=list)
    unreadable: int = 0

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")

    def add(self, error: Exception, index: int | None = None) -> None:
        """Raise ``error`` (``on_error="raise"``) or count it (with the frame's ``index``)."""
        if self.on_error == "raise":
            raise error
        self.count += 1
        self.unreadable += isinstance(error, UnreadableRest)
        if len(self.messages) < self.keep:
            self.messages.append(str(error))
        if index is not None:
            self.indices.append(int(index))

    def sift(self, records: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        """The ``(where, item)`` records whose item is not an error; each error is :meth:`add`-ed."""
        for where, item in records:
            if isinstance(item, Exception):
                self.add(item)
            else:
                yield where, item


@dataclass(frozen=True)
class LabelKeys:
    """Names under which a file keeps each label (calculator results, ``info`` or ``arrays``); a
    ``virial`` (eV; 3x3, 9 numbers or Voigt-6) is read only where no stress is, as
    ``-virial / volume``. A name no frame uses means that label is absent."""

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"
    virial: str = "virial"
    charge: str = "charge"
    spin: str = "spin"


def labelled(atoms: Atoms, where: str, keys: LabelKeys, required: tuple[str, ...]) -> Atoms:
    """``atoms`` (fresh from a reader) with canonical labels, the file's label keys removed;
    ``where`` ("file, frame k") starts every error message."""
    found: dict[str, Any] = {}
    for name in ("energy", "charge", "spin"):
        if (value := _find(atoms, getattr(keys, name))) is not None:
            found[name] = _scalar(value, getattr(keys, name), where)
    if (forces := _find(atoms, keys.forces)) is not None:
        found["forces"] = _finite(forces, keys.forces, where)
        if (shape := found["forces"].shape) != (len(atoms), 3):
            raise DataError(f"{where}: {keys.forces} has shape {shape}, expected ({len(atoms)}, 3)")
    stress, virial = _find(atoms, keys.stress), _find(atoms, keys.virial)
    if stress is not None:
        found["stress"] = _voigt(stress, keys.stress, where)
    elif virial is not None:
        if not atoms.cell.volume > 0:
            raise DataError(f"{where}: {keys.virial} needs a cell with non-zero volume")
        found["stress"] = -_voigt(virial, keys.virial, where) / atoms.cell.volume
    for name in required:
        if name not in found:
            sought = repr(getattr(keys, name))
            if name == "stress":
                sought = f"{keys.stress!r} or {keys.virial!r}"
            raise DataError(f"{where}: {name} missing (looked for {sought})")
    _check_plausible(found, len(atoms), where)
    for key in (keys.energy, keys.stress, keys.virial, keys.charge, keys.spin):
        atoms.info.pop(key, None)
    atoms.arrays.pop(keys.forces, None)
    atoms.info.update({name: found[name] for name in ("charge", "spin") if name in found})
    results = {name: found[name] for name in ("energy", "forces", "stress") if name in found}
    atoms.calc = SinglePointCalculator(atoms, **results) if results else None
    return atoms


def _check_plausible(found: dict[str, Any], num_atoms: int, where: str) -> None:
    """Refuse labels beyond :data:`PLAUSIBLE`: they would set the E0s and force scale of a run."""
    sizes = {}
    if "energy" in found and num_atoms:
        sizes["energy"] = (abs(found["energy"]) / num_atoms, "eV/atom", f"{found['energy']:.4g} eV")
    if "forces" in found and num_atoms:
        largest = float(np.linalg.norm(found["forces"], axis=1).max())
        sizes["forces"] = (largest, "eV/Å", f"max |F| {largest:.4g} eV/Å")
    if "stress" in found:
        largest = float(np.abs(found["stress"]).max())
        sizes["stress"] = (largest, "eV/Å³", f"max |stress| {largest:.4g} eV/Å³")
    for name, (size, unit, shown) in sizes.items():
        if size > PLAUSIBLE[name]:
            raise DataError(
                f"{where}: {name} {shown} is beyond any DFT label (above {PLAUSIBLE[name]:g} "
                f"{unit}): check its units and the file"
            )


def _find(atoms: Atoms, key: str) -> Any:
    """The value under ``key`` in the calculator results, ``info`` or ``arrays``, or None."""
    results = atoms.calc.results if atoms.calc is not None else {}
    for source in (results, atoms.info, atoms.arrays):
        if key in source:
            return source[key]
    return None


def _finite(value: Any, key: str, where: str) -> np.ndarray:
    """``value`` as a float64 array, checked to be numeric and finite."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: {key} is not numeric ({err})") from err
    if not np.isfinite(array).all():
        raise DataError(f"{where}: {key} contains NaN or inf")
    return array


def _scalar(value: Any, key: str, where: str) -> float:
    array = _finite(value, key, where)
    if array.size != 1:
        raise DataError(f"{where}: {key} has shape {array.shape}, expected one number")
    return float(array.item())


def _voigt(value: Any, key: str, where: str) -> np.ndarray:
    """A stress-like tensor given as Voigt-6, 9 numbers or 3x3, as Voigt-6 [6] (off-diagonal pairs
    of a full tensor averaged)."""
    array = _finite(value, key, where)
    if array.shape == (6,):
        return array
    if array.shape in ((9,), (3, 3)):
        return full_3x3_to_voigt_6_stress(array.reshape(3, 3))
    raise DataError(f"{where}: {key} has shape {array.shape}, expected (6,), (9,) or (3, 3)")
