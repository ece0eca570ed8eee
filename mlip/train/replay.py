"""Replay against forgetting: frames of the base model's domain mixed into fine-tuning.

:func:`replay_set` reads replay files into a :class:`~mlip.train.mixing.ReplaySet` (checked as
training data, loss weights scaled, split into train and val), which
:func:`~mlip.train.mixing.add_replay` mixes into every epoch through a
:class:`~mlip.train.mixing.MixedSampler`. Without a replay file,
:func:`pseudo_label` makes one: structures of the base model's domain and rattled, strained copies
of them (:func:`mlip.distill.perturb.strain_and_rattle`), labelled by the base model itself
(:func:`mlip.distill.labels.teacher_labels`), so that fine-tuning keeps close to it where the new
data says nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlip import keys
from mlip.calculator import MLIPCalculator
from mlip.data.datamodule import MemoryGraphs
from mlip.data.graph import MIN_DISTANCE, check_graph
from mlip.data.readers import bar, file_graphs, records
from mlip.data.records import LabelKeys
from mlip.distill.labels import LabelError, teacher_labels
from mlip.distill.perturb import strain_and_rattle, unlabelled
from mlip.errors import DataError, GeometryError, NonFiniteOutputError, UnknownElementError
from mlip.export import atomic_write, sha256
from mlip.nn.potential import Potential
from mlip.train.mixing import ReplaySet

PathLike = str | os.PathLike
PSEUDO = "pseudo"
"""``config_type`` of the frames :func:`pseudo_label` writes."""
_FORMAT = "mlip pseudo_label 1"
"""Part of the fingerprint: a change to how frames are made relabels old files."""


def replay_set(
    paths: PathLike | Sequence[PathLike],
    cutoff: float,
    species: Sequence[int],
    weight: float = 1.0,
    val_fraction: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float32,
    label_keys: LabelKeys | None = None,
    required: Sequence[str] = ("energy", "forces"),
    progress: bool = True,
    min_distance: float = MIN_DISTANCE,
) -> ReplaySet:
    """The replay frames of ``paths`` (any format the data readers take) as graphs in memory.

    Every frame is checked as a training frame is (labels ``required`` and finite, atoms at least
    ``min_distance`` Å apart, every element among ``species``, the fine-tuned model's atomic
    numbers); the first bad one raises :class:`DataError` naming file and frame. Each graph's loss
    weight (``atoms.info["weight"]``, default 1) is multiplied by ``weight``. A seeded
    ``val_fraction`` of the frames (at least one of two or more when ``val_fraction > 0``, never
    all) is held out for validation.

    Args:
        paths: replay file(s).
        cutoff: neighbour cutoff, Å.
        species: atomic numbers the fine-tuned model knows.
        weight: factor on the replay frames' loss weights (> 0, finite).
        val_fraction: fraction of the frames held out for validation, in ``[0, 1)``.
        seed: seed of the split.
        dtype: dtype of positions and labels.
        label_keys: names of the labels in the files (default :class:`LabelKeys`).
        required: labels every frame must have.
        progress: a progress bar while reading.
        min_distance: smallest allowed interatomic distance, Å (0: no check).
    """
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"replay weight must be positive and finite, got {weight}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"replay val_fraction must be in [0, 1), got {val_fraction}")
    files = [os.fspath(p) for p in ([paths] if isinstance(paths, str | os.PathLike) else paths)]
    species = sorted({int(z) for z in species})
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    frames = []
    for where, graph in file_graphs(files, cutoff, label_keys, required, dtype, progress=progress):
        problem = check_graph(graph, species, required, species, min_distance)
        if problem:
            raise DataError(f"{where}: {problem}")
        graph[keys.WEIGHT] = graph[keys.WEIGHT] * weight
        frames.append((where, graph))
    if not frames:
        raise DataError(f"{', '.join(files)}: no replay frames")
    num_val = int(round(val_fraction * len(frames)))
    if val_fraction > 0 and num_val == 0 and len(frames) > 1:
        num_val = 1
    num_val = min(num_val, len(frames) - 1)
    order = np.random.default_rng(seed).permutation(len(frames))
    val, train = np.sort(order[:num_val]), np.sort(order[num_val:])
    return ReplaySet(
        train=MemoryGraphs(frames[i] for i in train),
        val=MemoryGraphs(frames[i] for i in val),
        files=files,
        weight=float(weight),
    )


def pseudo_label(
    potential: Potential,
    structures: PathLike | Sequence[PathLike],
    out: PathLike,
    copies: int = 4,
    rattle: float = 0.03,
    strain: float = 0.02,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Label structures of the base model's domain with the base model: a replay file.

    Every frame of ``structures`` (files any data reader takes; labels, if any, are not used) is
    written as it is and as ``copies`` perturbed copies: positions rattled by Gaussian noise of
    ``rattle`` Å per Cartesian component and, for fully periodic cells, cell and positions strained
    by a symmetric strain whose six components are uniform in ``[-strain, strain]``. Each frame is
    labelled by ``potential`` through :class:`~mlip.calculator.MLIPCalculator` (energy eV, forces
    eV/Å and, for fully periodic cells, stress eV/Å³) and written to ``out`` as extxyz with
    ``config_type="pseudo"``, atomically (a temporary file in ``out``'s folder, then a rename).

    ``<out>.json`` holds a fingerprint of the structure files' bytes, these settings and the
    potential's state, and the sha256 of ``out``: a call with the same inputs returns ``out``
    untouched (a resumed run does not relabel), any change relabels. Concurrent calls (DDP ranks)
    take turns on ``<out>.lock``. Seeded: the same inputs give the same file.

    Raises :class:`DataError` naming file and frame for a structure that cannot be read or
    labelled (an element the potential lacks, atoms too close, a non-finite label).
    """
    if copies < 0 or not (rattle >= 0 and math.isfinite(rattle)):
        raise ValueError(f"copies and rattle must be >= 0, got {copies} and {rattle}")
    if not 0 <= strain < 1:
        raise ValueError(f"strain must be in [0, 1), got {strain}")
    files = [
        Path(p) for p in ([structures] if isinstance(structures, str | os.PathLike) else structures)
    ]
    if not files:
        raise ValueError("pseudo_label needs at least one structure file")
    out = Path(out)
    settings = {
        "copies": int(copies),
        "rattle": float(rattle),
        "strain": float(strain),
        "seed": int(seed),
    }
    sidecar = out.with_name(out.name + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.with_name(out.name + ".lock")):
        fingerprint = _fingerprint(potential, files, settings)
        if _reusable(out, sidecar, fingerprint):
            return out
        frames = _label(potential, _perturbed(files, settings), progress)
        atomic_write(out, lambda tmp: ase.io.write(tmp, frames, format="extxyz"))
        record = {
            "fingerprint": fingerprint,
            "sha256": sha256(out),
            "frames": len(frames),
            "structures": [os.fspath(p) for p in files],
            **settings,
        }
        atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    return out


def _perturbed(files: list[Path], settings: dict) -> list[tuple[str, Atoms]]:
    """``(where, atoms)`` of every structure and its rattled, strained copies, in file order."""
    rng = np.random.default_rng(settings["seed"])
    frames = []
    for path in files:
        for where, original in records(path, ":", required=()):
            if isinstance(original, DataError):
                raise original
            atoms = unlabelled(original)
            frames.append((where, atoms))
            for copy in range(1, settings["copies"] + 1):
                perturbed = strain_and_rattle(atoms, rng, settings["rattle"], settings["strain"])
                frames.append((f"{where} (copy {copy})", perturbed))
    return frames


def _label(potential: Potential, frames: list[tuple[str, Atoms]], progress: bool) -> list[Atoms]:
    """``frames`` with the potential's energy, forces and (fully periodic cells) stress."""
    training = potential.training
    calculator = MLIPCalculator(potential, device=potential.e0.device)
    out = []
    try:
        for where, atoms in bar(frames, progress, "pseudo-labelling"):
            try:
                results = teacher_labels(calculator, atoms)
            except (NonFiniteOutputError, UnknownElementError, GeometryError, LabelError) as err:
                raise DataError(f"{where}: cannot pseudo-label: {err}") from err
            atoms.info["config_type"] = PSEUDO
            atoms.calc = SinglePointCalculator(atoms, **results)
            out.append(atoms)
    finally:
        potential.train(training)
    return out


def _fingerprint(potential: Potential, files: list[Path], settings: dict) -> str:
    """sha256 of the structure files' bytes (folders: their files), ``settings`` and the
    potential (class, cutoff, every tensor of its state)."""
    digest = hashlib.sha256(_FORMAT.encode())
    model = {"class": type(potential.model).__name__, "cutoff": potential.cutoff}
    digest.update(json.dumps({**settings, **model}, sort_keys=True).encode())
    for path in files:
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in found:
            digest.update(sha256(file).encode())
    for name, tensor in sorted(potential.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _reusable(out: Path, sidecar: Path, fingerprint: str) -> bool:
    """Whether ``out`` was written from the inputs of ``fingerprint`` and not changed since."""
    try:
        record = json.loads(sidecar.read_text())
        return record["fingerprint"] == fingerprint and record["sha256"] == sha256(out)
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (waiting for another holder) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


__all__ = ["PSEUDO", "pseudo_label", "replay_set"]
