"""Teacher labels, written to ASE-LMDB as they come: a killed run continues where it stopped.

:func:`teacher_labels` asks a calculator for one frame's energy (eV), forces (``[N, 3]`` eV/Å) and,
for bulk cells, stress (Voigt ``[6]`` eV/Å³, ASE sign) and refuses non-finite values and absurd
forces (a component above ``max_force`` eV/Å: the teacher is out of its depth there).
:func:`label_frames` labels numbered frames into ``labels_<part>.aselmdb`` files (one row per
frame: ``key_value_pairs`` ``frame`` (its number) and ``config_type``; ``data`` the rest of its
``info``), each row its own LMDB transaction, so a kill at any point loses at most the frame being
labelled. A frame the teacher fails on (an exception, a non-finite or absurd label) goes to
``failed.jsonl`` (``{"frame", "name", "error"}``, one JSON object a line) instead; rerunning
skips every frame found in either, so each frame ends up exactly once in one of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase.db
import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.data.lmdb import close_environment
from mlip.data.readers import bar
from mlip.distill.perturb import unlabelled
from mlip.sim.io import is_bulk

FAILED = "failed.jsonl"


class LabelError(ValueError):
    """The teacher gave a non-finite, absurd or malformed label."""


def labels_path(directory: str | os.PathLike, part: str) -> Path:
    """``<directory>/labels_<part>.aselmdb``: the labelled frames of one part (train, test)."""
    return Path(directory) / f"labels_{part}.aselmdb"


def teacher_labels(
    calculator: Calculator, atoms: Atoms, max_force: float | None = None
) -> dict[str, Any]:
    """``{"energy": eV, "forces": [N, 3] eV/Å, "stress": [6] eV/Å³ (bulk cells, where the
    calculator has it)}`` of ``atoms`` by ``calculator``; a copy of ``atoms`` is computed, so
    ``atoms`` keeps no calculator. Raises :class:`LabelError` for a non-finite or misshapen value
    or a force component above ``max_force`` eV/Å; the calculator's own exceptions pass through."""
    work = unlabelled(atoms)
    work.calc = calculator
    results: dict[str, Any] = {
        "energy": float(work.get_potential_energy()),
        "forces": np.array(work.get_forces(), dtype=np.float64),
    }
    if is_bulk(work):
        try:
            results["stress"] = np.array(work.get_stress(voigt=True), dtype=np.float64)
        except PropertyNotImplementedError:
            pass
    if results["forces"].shape != (len(atoms), 3):
        raise LabelError(f"forces of shape {results['forces'].shape}, expected ({len(atoms)}, 3)")
    if "stress" in results and results["stress"].shape != (6,):
        raise LabelError(f"stress of shape {results['stress'].shape}, expected (6,)")
    bad = [name for name, value in results.items() if not np.isfinite(value).all()]
    if bad:
        raise LabelError(f"non-finite {', '.join(bad)} (refused, not written)")
    largest = float(np.abs(results["forces"]).max(initial=0.0))
    if max_force is not None and largest > max_force:
        raise LabelError(f"a force of {largest:.4g} eV/Å, above max_force={max_force:g} (refused)")
    return results


def frame_name(index: int, atoms: Atoms) -> str:
    """How a frame is named in messages: ``"frame 12 (rattle, Cu64 from cu.cif)"``."""
    kind = atoms.info.get("config_type", "-")
    source = atoms.info.get("source")
    made = f"{kind}, {atoms.get_chemical_formula()}" + (f" from {source}" if source else "")
    return f"frame {index} ({made})"


@dataclass
class LabelSummary:
    """What :func:`label_frames` found and did: frames labelled now and before, and every failed
    frame (``{"frame", "name", "error"}``, now and before)."""

    labelled: int = 0
    resumed: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # labelled frames per part

    def as_dict(self) -> dict[str, Any]:
        return {
            "labelled_now": self.labelled,
            "done_before": self.resumed,
            "frames_per_part": dict(self.counts),
            "num_failed": len(self.failed),
            "failed": self.failed,
        }


def done_frames(directory: str | os.PathLike, parts: Sequence[str]) -> dict[int, str]:
    """``{frame: part or "failed"}`` of every frame already labelled into ``directory`` or recorded
    as failed. Raises :class:`LabelError` if a frame is there twice (a file from elsewhere)."""
    found: dict[int, str] = {}
    for part in parts:
        path = labels_path(directory, part)
        if not path.exists():
            continue
        with ase.db.connect(str(path), type="aselmdb", use_lock_file=False) as db:
            for row in db.select(include_data=False):
                frame = row.key_value_pairs.get("frame")
                if not isinstance(frame, int) or frame in found:
                    raise LabelError(f"{path}, row {row.id}: frame {frame!r} missing or repeated")
                found[frame] = part
    for record in read_failed(directory):
        if record["frame"] in found:
            raise LabelError(f"{Path(directory) / FAILED}: frame {record['frame']} also labelled")
        found[record["frame"]] = "failed"
    return found


def read_failed(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``failed.jsonl`` in ``directory`` (none if absent); a last line cut short by
    a kill is dropped from the file (its frame is labelled again)."""
    path = Path(directory) / FAILED
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        path.write_text("".join(lines[:-1]), encoding="utf-8")
        lines = lines[:-1]
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except ValueError as err:
        raise LabelError(f"{path}: not one JSON record a line ({err}): remove it") from None


def label_frames(
    frames: Sequence[Atoms],
    parts: Sequence[str],
    teacher: Calculator,
    directory: str | os.PathLike,
    progress: bool = True,
    max_force: float | None = None,
) -> LabelSummary:
    """Label every frame of ``frames`` not yet done in ``directory`` with ``teacher``, frame ``k``
    into ``labels_<parts[k]>.aselmdb`` (or ``failed.jsonl``), in order; a force component above
    ``max_force`` eV/Å fails the frame. The caller holds the directory (one process at a time)."""
    if len(parts) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(parts)} parts")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(set(parts))
    done = done_frames(directory, names)
    summary = LabelSummary(resumed=len(done))
    summary.failed = read_failed(directory)
    todo = [k for k in range(len(frames)) if k not in done]
    for part in names:  # LMDB: one environment per file and process (readers of an earlier run)
        close_environment(labels_path(directory, part).resolve())
    databases = {
        part: ase.db.connect(str(labels_path(directory, part)), type="aselmdb", use_lock_file=False)
        for part in names
    }
    try:
        with open(directory / FAILED, "a", encoding="utf-8") as failed:
            for k in bar(todo, progress, "labelling", total=len(todo)):
                atoms = frames[k]
                try:
                    results = teacher_labels(teacher, atoms, max_force)
                except Exception as err:  # any teacher, any failure: named, never dropped
                    record = {"frame": k, "name": frame_name(k, atoms), "error": repr(err)}
                    failed.write(json.dumps(record) + "\n")
                    failed.flush()
                    os.fsync(failed.fileno())
                    summary.failed.append(record)
                    continue
                _write_row(databases[parts[k]], k, atoms, results)
                summary.labelled += 1
    finally:
        for db in databases.values():
            db.close()
    done = done_frames(directory, names)
    summary.counts = {part: sum(1 for p in done.values() if p == part) for part in names}
    return summary


def _write_row(db: Any, frame: int, atoms: Atoms, results: dict[str, Any]) -> None:
    """One row (its own transaction): ``atoms`` with ``results``, ``frame`` and ``config_type``."""
    row = unlabelled(atoms)
    row.calc = SinglePointCalculator(row, **results)
    info = {k: _plain(v) for k, v in atoms.info.items() if k not in ("config_type", "frame")}
    pairs = {"frame": int(frame), "config_type": str(atoms.info.get("config_type", "-"))}
    db.write(row, key_value_pairs=pairs, data=info)


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (ASE's database encoders need that)."""
    return value.item() if isinstance(value, np.generic) else value


__all__ = [
    "FAILED",
    "LabelError",
    "LabelSummary",
    "done_frames",
    "frame_name",
    "label_frames",
    "labels_path",
    "read_failed",
    "teacher_labels",
]
