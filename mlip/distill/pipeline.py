"""One distillation run from a composed ``conf/distill.yaml``: teacher -> structures -> labels ->
student -> errors against the teacher -> model file. Every step resumes.

:func:`distill` is what ``mlip distill`` runs; :func:`compose` builds the same config from Python.

Run directory layout (``cfg.run_dir``)::

    .lock                   held by the live run (a second process on the directory is refused)
    .hydra/config.yaml      the composed config
    structures.extxyz       every generated frame, frame k at position k (written once, atomically)
    structures.json         its fingerprint (sampler, MD, teacher, split, structure files' sha256),
                            the frames per config_type family and the MD runs that failed
    labels_train.aselmdb    teacher labels of the training frames (ASE-LMDB, a row per frame)
    labels_test.aselmdb     teacher labels of the held-out frames
    failed.jsonl            frames the teacher failed on (or gave non-finite labels for), by name
    student/                the student's `mlip train` run (checkpoints, logs, its model.pt)
    model.pt                the student, its metadata naming the teacher, licence, sampler, errors
    report.json             the distillation part of that metadata
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
import torch
from ase import Atoms
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mlip.data.readers import bar, records
from mlip.distill.labels import LabelSummary, label_frames, labels_path
from mlip.distill.student import Student, errors_against_teacher, md_speed
from mlip.distill.teacher import Teacher
from mlip.errors import ConfigError, DataError, RunDirectoryError
from mlip.export import atomic_write, load_model, save_model
from mlip.sim.evaluate import format_table
from mlip.train import CONF_DIR
from mlip.train.rundir import locked_run_dir, record_config

STRUCTURES = "structures.extxyz"
PARTS = ("train", "test")
_FORMAT = "mlip distill structures 1"
"""Part of the fingerprint: a change to how frames are made regenerates them."""


@dataclass
class DistillResult:
    """What a run produced: the student's model file (None with ``until=labels``) and its errors
    against the teacher (``{"all" | config_type: evaluate.errors(...)}``, meV units), the
    labelling summary and the MD timings (s per step)."""

    run_dir: Path
    model_path: Path | None
    errors: dict[str, dict]
    labels: LabelSummary
    md_speed: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def search_path() -> str:
    """The override that makes ``conf/distill/`` a config root (groups ``teacher``, ``sampler``)."""
    return f"hydra.searchpath=[file://{CONF_DIR / 'distill'}]"


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``mlip distill <overrides>`` would run (without the ``hydra`` node)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="distill", overrides=[*overrides, search_path()])


def distill(cfg: DictConfig) -> DistillResult:
    """Run (or continue) the distillation ``cfg`` describes; see the module docstring.

    Raises :class:`~mlip.errors.RunDirectoryInUse` if another live process holds
    ``cfg.run_dir``, :class:`~mlip.errors.RunDirectoryError` if it holds labels of other sampler,
    MD, teacher or split settings, :class:`~mlip.errors.ConfigError` for a bad value.
    """
    if not (isinstance(cfg.test_fraction, float | int) and 0 <= cfg.test_fraction < 1):
        raise ConfigError(f"test_fraction={cfg.test_fraction!r}: a fraction in [0, 1)")
    if cfg.structures and "structures" not in cfg.sampler:
        raise ConfigError(
            f"structure files given ({', '.join(cfg.structures)}) but sampler "
            f"{cfg.sampler.get('_target_')} does not read them: use sampler=structures"
        )
    if cfg.get("until", "model") not in ("labels", "model"):
        raise ConfigError(f"until={cfg.until!r}: labels (stop after labelling) or model")
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    run_dir = Path(cfg.run_dir)
    with locked_run_dir(run_dir):
        return _distill(cfg, run_dir)


def _distill(cfg: DictConfig, run_dir: Path) -> DistillResult:
    started = time.perf_counter()
    teacher = build_teacher(cfg.teacher)
    print(
        f"mlip distill: run directory {run_dir.resolve()}\n"
        f"  teacher: {teacher.name} (licence {teacher.licence or 'unknown'})",
        flush=True,
    )
    frames, record = structures(cfg, teacher, run_dir)
    record_config(cfg, run_dir)  # once the settings are known to fit the directory's frames
    kinds = Counter(family(a) for a in frames)
    print(
        f"  structures: {len(frames)} frames ({', '.join(f'{k} {n}' for k, n in kinds.items())}) "
        f"in {run_dir / STRUCTURES}",
        flush=True,
    )
    parts = split(frames, float(cfg.test_fraction), int(cfg.seed))
    max_force = cfg.get("max_force")
    labels = label_frames(
        frames, parts, teacher.calculator, run_dir, progress=cfg.progress, max_force=max_force
    )
    _report_labels(labels, run_dir)
    if cfg.get("until", "model") == "labels":
        print(
            f"mlip distill: labels done (until=labels) in {time.perf_counter() - started:.0f} s; "
            "run the same command without until=labels to train the student",
            flush=True,
        )
        return DistillResult(run_dir, None, {}, labels)

    student: Student = instantiate(cfg.student, _convert_="all")
    test = labels_path(run_dir, "test") if labels.counts.get("test") else None
    result = student.train(
        student.train_overrides(
            labels_path(run_dir, "train"),
            test,
            run_dir / "student",
            cfg.seed,
            cfg.progress,
            max_force,
        )
    )
    potential = load_model(result.model_path)
    held_out, absurd = held_out_frames(test, max_force) if test else ([], 0)
    for atoms in held_out:
        atoms.info["config_type"] = family(atoms)
    table = errors_against_teacher(potential, held_out) if held_out else {}
    if table:
        print(
            f"Student against the teacher on {table['all']['frames']} held-out frames "
            f"(per config_type family; {absurd} with forces above max_force={max_force} eV/Å or "
            "absurd labels left out):\n"
            f"{format_table(table)}",
            flush=True,
        )
    speed = _md_speeds(student, teacher, potential, frames[0])
    report = {
        "teacher": teacher.describe(),
        "sampler": OmegaConf.to_container(cfg.sampler, resolve=True),
        "md": OmegaConf.to_container(cfg.md, resolve=True) if cfg.md else None,
        "md_failures": record.get("md_failures", []),
        "seed": int(cfg.seed),
        "test_fraction": float(cfg.test_fraction),
        "frames": dict(kinds),
        "labels": labels.as_dict(),
        "max_force_eV_per_A": max_force,
        "held_out_above_max_force": absurd,
        "errors_vs_teacher": table,
        "error_units": {"energy": "meV/atom", "forces": "meV/Å", "stress": "meV/Å³"},
        "md_speed_s_per_step": speed,
        "student_run": str((run_dir / "student").resolve()),
    }
    metadata = {**(potential.metadata or {}), "distill": report}
    model_path = save_model(potential, run_dir / "model.pt", metadata=metadata)
    _write_text(run_dir / "report.json", json.dumps(report, indent=1, default=str))
    print(
        f"mlip distill: done in {time.perf_counter() - started:.0f} s.\n"
        f"Model file: {model_path.resolve()} (distilled from {teacher.name})",
        flush=True,
    )
    return DistillResult(run_dir, model_path, table, labels, speed, report)


def held_out_frames(path: Path, max_force: float | None) -> tuple[list[Atoms], int]:
    """The held-out frames of ``path`` the student is tested on, and how many were left out: a
    force component above ``max_force`` eV/Å (labelled before ``max_force`` refused them) or a
    label the reader refuses as absurd (:func:`mlip.data.readers.records`)."""
    kept, left_out = [], 0
    for _, atoms in records(path):
        absurd = isinstance(atoms, DataError) or (
            max_force is not None and np.abs(atoms.get_forces()).max() > max_force
        )
        if absurd:
            left_out += 1
        else:
            kept.append(atoms)
    return kept, left_out


def build_teacher(node: DictConfig) -> Teacher:
    """The :class:`Teacher` of a ``teacher`` node; a node building a bare ASE calculator becomes
    a teacher named after its ``_target_`` (licence unknown)."""
    built = instantiate(node, _convert_="all")
    if isinstance(built, Teacher):
        return built
    from ase.calculators.calculator import Calculator

    if not isinstance(built, Calculator):
        raise ConfigError(
            f"teacher: {node.get('_target_')} built a {type(built).__name__}, not an ASE "
            "calculator or an mlip.distill.teacher.Teacher"
        )
    return Teacher(calculator=built, name=str(node.get("_target_")))


def structures(
    cfg: DictConfig, teacher: Teacher, run_dir: Path
) -> tuple[list[Atoms], dict[str, Any]]:
    """The run's frames: read from ``run_dir/structures.extxyz`` if it was written from the same
    settings, else generated (sampler, then teacher MD from its structures) and written once."""
    path, sidecar = run_dir / STRUCTURES, run_dir / "structures.json"
    fingerprint = _fingerprint(cfg, teacher)
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        record = {}
    if path.is_file() and record.get("fingerprint") == fingerprint:
        return ase.io.read(path, ":", format="extxyz"), record
    labelled = [labels_path(run_dir, part) for part in PARTS] + [run_dir / "failed.jsonl"]
    if any(p.exists() for p in labelled):
        raise RunDirectoryError(
            f"run directory {run_dir} holds labels of other sampler, md, teacher, seed or "
            f"test_fraction settings (or changed structure files): give another run_name=... or "
            f"remove {run_dir}"
        )
    sampler = instantiate(cfg.sampler, _convert_="all")
    static = list(bar(sampler.frames(teacher.calculator), cfg.progress, "structures"))
    if not static:
        raise ConfigError(f"sampler ({cfg.sampler.get('_target_')}) made no structures")
    frames = list(static)
    failures: list[str] = []
    if cfg.md:
        md = instantiate(cfg.md, _convert_="all")
        runs = len(md.start_indices(len(static))) * len(md.temperatures_K)
        total = runs * (md.steps // md.interval)
        frames += list(
            bar(md.frames(static, teacher.calculator), cfg.progress, "teacher MD", total)
        )
        failures = md.failures
    atomic_write(path, lambda tmp: ase.io.write(tmp, frames, format="extxyz"))
    record = {
        "fingerprint": fingerprint,
        "frames": len(frames),
        "families": dict(Counter(family(a) for a in frames)),
        "md_failures": failures,
    }
    _write_text(sidecar, json.dumps(record, indent=1))
    return ase.io.read(path, ":", format="extxyz"), record  # labels see the file's frames


def family(atoms: Atoms) -> str:
    """A frame's ``config_type`` up to its first ``:`` (``"rocksalt:NaCl:v1.00:r0"`` ->
    ``"rocksalt"``, ``"md_300K"`` as it is): the groups of the split and the error tables."""
    return str(atoms.info.get("config_type", "-")).split(":", 1)[0]


def split(frames: Sequence[Atoms], test_fraction: float, seed: int) -> list[str]:
    """``"train"`` or ``"test"`` for each frame: within each :func:`family`, a seeded
    ``round(test_fraction * n)`` of its ``n`` frames (at least one of two or more when
    ``test_fraction > 0``) are held out."""
    groups: dict[str, list[int]] = {}
    for k, atoms in enumerate(frames):
        groups.setdefault(family(atoms), []).append(k)
    parts = ["train"] * len(frames)
    rng = np.random.default_rng(seed)
    for name in sorted(groups):
        members = groups[name]
        count = int(round(test_fraction * len(members)))
        if test_fraction > 0 and count == 0 and len(members) > 1:
            count = 1
        for k in rng.permutation(members)[:count]:
            parts[int(k)] = "test"
    return parts


def _md_speeds(
    student: Student, teacher: Teacher, potential: Any, atoms: Atoms
) -> dict[str, float]:
    """Seconds per MD step of teacher and student on ``atoms``, measured one after the other."""
    if student.md_speed_steps <= 0:
        return {}
    from mlip.calculator import MLIPCalculator

    steps = student.md_speed_steps
    speed = {
        "teacher": md_speed(teacher.calculator, atoms, steps),
        "student": md_speed(MLIPCalculator(potential), atoms, steps),
    }
    speed["speedup"] = speed["teacher"] / speed["student"]
    print(
        f"MD speed ({len(atoms)} atoms, {steps} Langevin steps each): teacher "
        f"{1e3 * speed['teacher']:.2f} ms/step, student {1e3 * speed['student']:.2f} ms/step "
        f"(student {speed['speedup']:.2f}x the teacher's speed)",
        flush=True,
    )
    return speed


def _report_labels(labels: LabelSummary, run_dir: Path) -> None:
    counts = labels.counts
    lines = [
        f"  labels: {counts.get('train', 0)} train / {counts.get('test', 0)} held-out frames "
        f"({labels.labelled} labelled now, {labels.resumed} done before)"
    ]
    if labels.failed:
        lines.append(
            f"  the teacher failed on {len(labels.failed)} frame(s), left out "
            f"(see {run_dir / 'failed.jsonl'}):"
        )
        lines += [f"    {r['name']}: {r['error']}" for r in labels.failed[:10]]
        if len(labels.failed) > 10:
            lines.append(f"    ... and {len(labels.failed) - 10} more")
    print("\n".join(lines), flush=True)


def _fingerprint(cfg: DictConfig, teacher: Teacher) -> str:
    """sha256 of everything the frames and their split depend on."""
    settings = {
        "format": _FORMAT,
        "sampler": OmegaConf.to_container(cfg.sampler, resolve=True),
        "md": OmegaConf.to_container(cfg.md, resolve=True) if cfg.md else None,
        "teacher": OmegaConf.to_container(cfg.teacher, resolve=True),
        "teacher_file": teacher.settings.get("sha256"),
        "test_fraction": float(cfg.test_fraction),
        "seed": int(cfg.seed),
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in cfg.get("structures") or []:
        if Path(name).is_file():
            digest.update(hashlib.sha256(Path(name).read_bytes()).hexdigest().encode())
    return digest.hexdigest()


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


__all__ = ["DistillResult", "build_teacher", "compose", "distill", "family", "split", "structures"]
