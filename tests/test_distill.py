"""Distillation (``mlip distill``) with ASE's EMT as the teacher: samplers reproducible from their
seed, labelling that resumes after a SIGKILL with every frame once, failed and non-finite frames
named, and a tiny student that reproduces EMT on held-out frames, its model file naming the
teacher."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

import mlip
import mlip.cli
from mlip.data.readers import read_frames
from mlip.distill import perturb
from mlip.distill.labels import FAILED, label_frames, labels_path, read_failed, teacher_labels
from mlip.distill.md import TeacherMD
from mlip.distill.pipeline import build_teacher, compose, distill, split
from mlip.distill.samplers import CONFIG_TYPES, StructureSampler
from mlip.errors import RunDirectoryError, RunDirectoryInUse
from mlip.sim.evaluate import predict
from mlip.train.rundir import locked_run_dir

# a tiny student: one small Facet layer, a short cutoff (EMT's reaches to the third fcc shell)
STUDENT = (
    "student.overrides=['model.channels=[16,8,4]','model.grid_channels=4',"
    "'data.stream=false','data.batch_size=4','trainer.max_epochs=25',"
    "'cutoff=4.0']"
)
FORCE_RMSE_TOLERANCE = 0.25
"""The student's force RMSE against EMT on held-out frames, as a fraction of the RMS of EMT's
held-out forces (measured: about 0.1 after 25 epochs of a 2k-weight Facet on 40 frames)."""


@pytest.fixture(scope="module")
def cu_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("structures") / "cu.cif"
    ase.io.write(path, bulk("Cu", "fcc", a=3.61, cubic=True))
    return path


def small_sampler(path, seed=0, **overrides) -> StructureSampler:
    settings = dict(min_atoms=8, rattles=3, isotropic_strains=[-0.02, 0.02], shears=2, vacancies=1)
    return StructureSampler([path], seed=seed, **{**settings, **overrides})


def same_frames(a, b) -> bool:
    return len(a) == len(b) and all(
        x.info["config_type"] == y.info["config_type"]
        and np.array_equal(x.numbers, y.numbers)
        and np.array_equal(x.positions, y.positions)
        and np.array_equal(x.cell.array, y.cell.array)
        for x, y in zip(a, b, strict=True)
    )


def read_rows(path):
    with ase.db.connect(str(path), type="aselmdb", use_lock_file=False) as db:
        return [(row.frame, row.toatoms()) for row in db.select()]


# -- samplers ---------------------------------------------------------------------------------------


def test_structure_sampler_is_reproducible_from_its_seed(cu_file):
    frames = list(small_sampler(cu_file).frames())
    assert same_frames(frames, list(small_sampler(cu_file).frames()))
    assert not same_frames(frames, list(small_sampler(cu_file, seed=1).frames()))
    kinds = [a.info["config_type"] for a in frames]
    assert kinds == ["original"] + ["rattle"] * 3 + ["strain_iso"] * 2 + ["strain_shear"] * 2 + [
        "vacancy"
    ]
    assert set(kinds) <= set(CONFIG_TYPES) and all(a.calc is None for a in frames)
    original = frames[0]
    assert len(original) == 8 and len(frames[-1]) == 7  # the 4-atom cell grown to 8
    volumes = [a.get_volume() / original.get_volume() for a in frames[4:6]]
    assert np.allclose(volumes, [0.98**3, 1.02**3])
    assert np.isclose(frames[6].get_volume(), original.get_volume(), rtol=1e-2)  # shear


def test_perturbations_leave_their_input_alone_and_keep_charge_and_spin():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.info.update(charge=1.0, spin=2.0, energy=3.0)
    before = atoms.positions.copy()
    out = perturb.strain_and_rattle(atoms, np.random.default_rng(0), 0.05, 0.03)
    assert np.array_equal(atoms.positions, before) and out.info == {"charge": 1.0, "spin": 2.0}
    assert len(perturb.supercell(atoms, 30)) == 32 and len(perturb.supercell(atoms, 1)) == 4
    with pytest.raises(ValueError, match="cannot remove"):
        perturb.vacancies(atoms, np.random.default_rng(0), 4)


def test_teacher_md_snapshots_are_reproducible_and_tagged(cu_file):
    static = list(small_sampler(cu_file).frames())
    md = dict(temperatures_K=[300, 900], steps=12, interval=4, starts=2, seed=3)
    first = list(TeacherMD(**md).frames(static, EMT()))
    assert same_frames(first, list(TeacherMD(**md).frames(static, EMT())))
    assert not same_frames(first, list(TeacherMD(**{**md, "seed": 4}).frames(static, EMT())))
    assert TeacherMD(**md).start_indices(len(static)) == [0, len(static) - 1]
    kinds = [a.info["config_type"] for a in first]
    assert kinds == (["md_300K"] * 3 + ["md_900K"] * 3) * 2
    assert [a.info["md_step"] for a in first[:3]] == [4, 8, 12] and first[0].calc is None


def test_held_out_frames_are_drawn_within_each_config_type_family():
    kinds = [f"rocksalt:NaCl:v1.00:r{i}" for i in range(10)] + ["md_300K"] * 5 + ["original"]
    frames = [Atoms("Cu", info={"config_type": kind}) for kind in kinds]
    parts = split(frames, 0.2, seed=0)
    assert parts == split(frames, 0.2, seed=0) and parts != split(frames, 0.2, seed=1)
    assert (
        parts[:10].count("test") == 2 and parts[10:15].count("test") == 1 and parts[15] == "train"
    )


# -- labels -----------------------------------------------------------------------------------------


class KilledAfter(EMT):
    """EMT that SIGKILLs its own process at its ``k``-th energy (mid-way through labelling)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.left = k

    def calculate(self, *args, **kwargs):
        if self.left == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        self.left -= 1
        super().calculate(*args, **kwargs)


def _label_until_killed(frames, parts, directory, k):
    label_frames(frames, parts, KilledAfter(k), directory, progress=False)


def test_labelling_resumes_after_sigkill_with_every_frame_once(cu_file, tmp_path):
    frames = list(small_sampler(cu_file).frames())
    parts = split(frames, 0.3, seed=0)
    assert parts.count("test") == 3  # one of each group of two or more
    child = multiprocessing.get_context("fork").Process(
        target=_label_until_killed, args=(frames, parts, tmp_path, 5)
    )
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    done = [
        frame for part in ("train", "test") for frame, _ in read_rows(labels_path(tmp_path, part))
    ]
    assert 0 < len(done) < len(frames)  # killed mid-way, the frames before it kept

    summary = label_frames(frames, parts, EMT(), tmp_path, progress=False)
    assert summary.resumed == len(done) and summary.labelled == len(frames) - len(done)
    rows = {part: read_rows(labels_path(tmp_path, part)) for part in ("train", "test")}
    numbers = sorted(frame for part in rows.values() for frame, _ in part)
    assert numbers == list(range(len(frames)))  # each frame once, no gap
    for part, found in rows.items():
        for frame, atoms in found:
            assert parts[frame] == part
            assert np.array_equal(atoms.positions, frames[frame].positions)
            expected = teacher_labels(EMT(), frames[frame])
            assert np.isclose(atoms.get_potential_energy(), expected["energy"])
            assert np.allclose(atoms.get_forces(), expected["forces"])
            assert np.allclose(atoms.get_stress(), expected["stress"])
    again = label_frames(frames, parts, EMT(), tmp_path, progress=False)
    assert again.labelled == 0 and again.counts == summary.counts


class Flaky(EMT):
    """EMT that raises on 7-atom frames (vacancies) and gives a NaN energy at a strain."""

    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        if len(self.atoms) == 7:
            raise RuntimeError("teacher did not converge")
        if self.atoms.get_volume() < 0.95 * 8 * 3.61**3 / 4:
            self.results["energy"] = float("nan")


def test_failed_and_nonfinite_frames_are_named_and_never_written(cu_file, tmp_path):
    frames = list(small_sampler(cu_file, isotropic_strains=[-0.03, 0.02]).frames())
    parts = ["train"] * len(frames)
    summary = label_frames(frames, parts, Flaky(), tmp_path, progress=False)
    failed = {r["frame"]: r for r in read_failed(tmp_path)}
    assert sorted(failed) == [4, 8] and len(summary.failed) == 2  # strain -3 %, the vacancy
    assert "strain_iso, Cu8" in failed[4]["name"] and "non-finite energy" in failed[4]["error"]
    assert (
        failed[8]["name"].startswith("frame 8 (vacancy, Cu7") and "converge" in failed[8]["error"]
    )
    written = sorted(frame for frame, _ in read_rows(labels_path(tmp_path, "train")))
    assert written == [k for k in range(len(frames)) if k not in failed]
    again = label_frames(frames, parts, Flaky(), tmp_path, progress=False)
    assert again.labelled == 0 and len(again.failed) == 2  # recorded, not retried
    # a record cut short by a kill is dropped, and that frame is labelled again
    path = tmp_path / FAILED
    path.write_text(path.read_text() + '{"frame": 9, "na')
    assert len(read_failed(tmp_path)) == 2 and path.read_text().endswith("\n")


class Exploding(EMT):
    """EMT that gives one atom an absurd force on compressed cells (as SevenNet-0 does far out of
    its training domain: 10^7 eV/Å on CsCl-type HgH)."""

    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        if self.atoms.get_volume() < 0.99 * 8 * 3.61**3 / 4:
            self.results["forces"] = self.results["forces"].copy()
            self.results["forces"][0, 2] = 1e7


def test_absurd_forces_are_refused_and_named(cu_file, tmp_path):
    frames = list(small_sampler(cu_file, isotropic_strains=[-0.03, 0.02]).frames())
    parts = ["train"] * len(frames)
    summary = label_frames(frames, parts, Exploding(), tmp_path, progress=False, max_force=50.0)
    failed = {r["frame"]: r for r in read_failed(tmp_path)}
    assert sorted(failed) == [4] and len(summary.failed) == 1  # the -3 % strain
    assert "a force of 1e+07 eV/Å, above max_force=50" in failed[4]["error"]
    written = sorted(frame for frame, _ in read_rows(labels_path(tmp_path, "train")))
    assert written == [k for k in range(len(frames)) if k != 4]
    labels = teacher_labels(Exploding(), frames[4])  # no limit: the label is the teacher's
    assert labels["forces"][0, 2] == 1e7


# -- the whole run ----------------------------------------------------------------------------------


def test_distilled_student_reproduces_emt_and_names_its_teacher(cu_file, tmp_path, capsys):
    run = tmp_path / "run"
    overrides = [
        f"structures=['{cu_file}']",
        f"run_dir={run}",
        "sampler.min_atoms=32",
        "md.steps=60",
        "md.interval=4",
        "md.temperatures_K=[300,700]",
        "test_fraction=0.2",
        "progress=false",
        "student.md_speed_steps=3",
        STUDENT,
    ]
    first = distill(compose([*overrides, "until=labels"]))  # labels only; the full run continues
    assert first.model_path is None and not (run / "student").exists() and first.labels.labelled
    result = distill(compose(overrides))
    assert result.labels.labelled == 0 and result.labels.resumed == first.labels.labelled
    out = capsys.readouterr().out
    assert "Student against the teacher on" in out and "MD speed (32 atoms" in out
    test = read_frames(labels_path(run, "test"))
    kinds = {a.info["config_type"] for a in test}
    assert {"md_300K", "md_700K", "rattle"} <= kinds
    force_rms = np.sqrt(np.mean(np.concatenate([a.get_forces() for a in test]) ** 2)) * 1e3
    rmse = result.errors["all"]["forces"]["rmse"]  # meV/Å
    assert rmse < FORCE_RMSE_TOLERANCE * force_rms, (rmse, force_rms)
    assert result.errors["md_300K"]["forces"]["rmse"] < FORCE_RMSE_TOLERANCE * force_rms

    model = mlip.load_model(result.model_path)
    info = model.metadata["distill"]
    assert info["teacher"]["name"] == "ASE EMT" and info["teacher"]["licence"].startswith("LGPL")
    assert info["sampler"]["_target_"].endswith("StructureSampler")
    assert info["sampler"]["min_atoms"] == 32 and info["md"]["temperatures_K"] == [300, 700]
    assert info["errors_vs_teacher"]["all"]["forces"]["rmse"] == rmse
    assert json.loads((run / "report.json").read_text())["labels"]["num_failed"] == 0

    # the student's model file as a teacher in its turn (teacher=model)
    teacher = build_teacher(compose(["teacher=model", f"teacher.path={result.model_path}"]).teacher)
    assert teacher.describe()["sha256"] and teacher.licence == "LGPL-2.1-or-later"  # inherited
    frame = test[0]
    labels = teacher_labels(teacher.calculator, frame)
    assert np.allclose(labels["forces"], predict(model, [frame]).forces_pred, atol=1e-4)

    again = distill(compose(overrides))  # continues: nothing generated or labelled again
    assert again.labels.labelled == 0 and again.labels.resumed == len(
        ase.io.read(run / "structures.extxyz", ":")
    )
    with pytest.raises(RunDirectoryError, match="holds labels of other"):
        distill(compose([*overrides, "seed=1"]))
    with locked_run_dir(run), pytest.raises(RunDirectoryInUse):
        distill(compose(overrides))


def test_cli_prints_the_composed_config_and_refuses_a_sampler_without_structures(tmp_path, capsys):
    assert mlip.cli.main(["distill", "cu.cif", "md.steps=7", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert "structures:\n- cu.cif" in out and "steps: 7" in out
    assert "_target_: mlip.distill.samplers.StructureSampler" in out
    assert mlip.cli.main(["distill", "teacher=nope", "--cfg", "job"]) == 2
    assert "teacher" in capsys.readouterr().err
    assert mlip.cli.main(["distill", f"run_dir={tmp_path / 'run'}", "progress=false"]) == 2
    assert "no structure files given" in capsys.readouterr().err
