"""Readers: every format against an independent read of the same file, and every error message."""

import shutil
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io.formats import string2index

from mlip.data.readers import read_frames
from mlip.data.records import LabelKeys
from mlip.errors import DataError

DATA = Path(__file__).parent.parent / "data"
SI_XYZ = DATA / "zuo2020" / "Si_train.xyz"
GAP_XYZ = DATA / "si_gap18_tiny" / "Si_tiny.xyz"
BPA_LMDB = DATA / "aselmdb_samples" / "3bpa_train_300K_first64.aselmdb"
SI_LMDB = DATA / "aselmdb_samples" / "zuo2020_Si_train_first32.aselmdb"
GAP_KEYS = LabelKeys(energy="dft_energy", forces="dft_force", virial="dft_virial")


def assert_same_labels(atoms, reference):
    """Structure and energy/forces/stress of ``atoms`` equal those of ``reference``."""
    np.testing.assert_array_equal(atoms.numbers, reference.numbers)
    np.testing.assert_allclose(atoms.positions, reference.positions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(atoms.cell.array, reference.cell.array, rtol=0, atol=1e-12)
    assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(atoms.get_stress(), reference.get_stress(), rtol=0, atol=1e-12)


def emt_frames(n=3):
    """Small strained, rattled Cu cells with EMT energy, forces and stress."""
    frames = []
    for i in range(n):
        atoms = bulk("Cu", cubic=True)
        atoms.set_cell(atoms.cell * (1 + 0.01 * i), scale_atoms=True)
        atoms.rattle(stdev=0.05, seed=i)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(
            atoms,
            energy=atoms.get_potential_energy(),
            forces=atoms.get_forces(),
            stress=atoms.get_stress(),
        )
        frames.append(atoms)
    return frames


def test_extxyz_matches_ase():
    frames = read_frames(SI_XYZ, "3:6")
    reference = ase.io.read(SI_XYZ, "3:6")
    assert len(frames) == 3
    for atoms, ref in zip(frames, reference, strict=True):
        assert_same_labels(atoms, ref)
        assert atoms.info["config_type"] == ref.info["config_type"]
    assert_same_labels(read_frames(SI_XYZ, -1)[0], ase.io.read(SI_XYZ, -1))
    assert len(read_frames(SI_XYZ, "::50")) == 5  # 214 frames: 0, 50, 100, 150, 200


def test_gap_keys_virial_to_stress():
    frames = read_frames(GAP_XYZ, keys=GAP_KEYS)
    assert len(frames) == 53
    raw = ase.io.read(GAP_XYZ, 1)
    virial = np.array(raw.info["dft_virial"], dtype=float).reshape(3, 3)
    stress = -virial / abs(np.linalg.det(raw.cell.array))
    voigt = [stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2], stress[0, 1]]
    atoms = frames[1]
    np.testing.assert_allclose(atoms.get_stress(), voigt, rtol=1e-12, atol=0)
    assert atoms.get_potential_energy() == raw.info["dft_energy"]
    np.testing.assert_array_equal(atoms.get_forces(), raw.arrays["dft_force"])
    assert atoms.info["config_type"] == "dia"
    assert "dft_energy" not in atoms.info and "dft_force" not in atoms.arrays

    isolated = frames[0]
    assert isolated.info["config_type"] == "isolated_atom"
    assert "stress" not in isolated.calc.results
    assert isolated.get_potential_energy() == pytest.approx(-158.54496821, abs=1e-8)
    with pytest.raises(DataError, match=r"Si_tiny\.xyz, frame 0: stress missing"):
        read_frames(GAP_XYZ, keys=GAP_KEYS, required=("energy", "forces", "stress"))
    with pytest.raises(DataError, match=r"Si_tiny\.xyz, frame 0: energy missing .*energy"):
        read_frames(GAP_XYZ)  # default keys: ASE finds no `energy` in a GAP file


def test_aselmdb_charge_spin_and_stress():
    frames = read_frames(BPA_LMDB)
    assert len(frames) == 64
    assert [a.info["source_index"] for a in frames] == list(range(64))
    for atoms in frames:
        assert atoms.info["charge"] == 0.0 and isinstance(atoms.info["charge"], float)
        assert atoms.info["spin"] == 1.0 and isinstance(atoms.info["spin"], float)
        assert atoms.get_forces().shape == (27, 3)
        assert "stress" not in atoms.calc.results and not atoms.pbc.any()
    assert len({a.get_potential_energy() for a in frames}) == 64

    si = read_frames(SI_LMDB, "5:8")
    for atoms, ref in zip(si, ase.io.read(SI_XYZ, "5:8"), strict=True):
        assert_same_labels(atoms, ref)  # the LMDB file is a conversion of these frames
        assert atoms.info["config_type"] == ref.info["config_type"]


def test_aselmdb_closed_after_error():
    # a second open of an LMDB file still open in this process would raise
    with pytest.raises(DataError, match=r"3bpa_train_300K_first64\.aselmdb, frame 0: stress"):
        read_frames(BPA_LMDB, required=("stress",))
    assert len(read_frames(BPA_LMDB, "0:2")) == 2


def test_aselmdb_directory(tmp_path):
    for file in (SI_LMDB, BPA_LMDB):
        shutil.copy(file, tmp_path)
    frames = read_frames(tmp_path)
    assert len(frames) == 96
    assert [len(a) for a in frames[63:65]] == [
        27,
        len(ase.io.read(SI_XYZ, 0)),
    ]  # sorted: 3bpa first
    across = read_frames(tmp_path, "62:66")
    assert [a.info["source_index"] for a in across] == [62, 63, 0, 1]
    assert_same_labels(read_frames(tmp_path, -1)[0], ase.io.read(SI_XYZ, 31))


def test_ase_db(tmp_path):
    path = tmp_path / "cu.db"
    reference = emt_frames()
    with ase.db.connect(path) as db:
        for i, atoms in enumerate(reference):
            db.write(atoms, config_type="strained", data={"charge": i, "spin": 2})
    frames = read_frames(path)
    assert len(frames) == 3
    for i, (atoms, ref) in enumerate(zip(frames, reference, strict=True)):
        assert_same_labels(atoms, ref)
        assert atoms.info["config_type"] == "strained"
        assert atoms.info["charge"] == float(i) and atoms.info["spin"] == 2.0
    assert frames[2].get_potential_energy() != frames[0].get_potential_energy()


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.xyz: no such file"):
        read_frames(tmp_path / "nope.xyz")
    (tmp_path / "empty.xyz").touch()
    with pytest.raises(DataError, match=r"empty\.xyz: file is empty"):
        read_frames(tmp_path / "empty.xyz")
    (tmp_path / "blank.xyz").write_text("\n\n")
    with pytest.raises(DataError, match=r"blank\.xyz: contains no frames"):
        read_frames(tmp_path / "blank.xyz")
    (tmp_path / "spaces.xyz").write_text(" \n\t\n  \n")
    for index in (":", "0:5", 0):  # whatever the selection
        with pytest.raises(DataError, match=r"spaces\.xyz: contains no frames \(only blank lines"):
            read_frames(tmp_path / "spaces.xyz", index)
    with pytest.raises(DataError, match=r"Si_train\.xyz: no frame 500"):
        read_frames(SI_XYZ, 500)
    with pytest.raises(DataError, match=r"no \*\.aselmdb"):
        read_frames(tmp_path)


def test_malformed_extxyz(tmp_path):
    path = tmp_path / "broken.xyz"
    ase.io.write(path, emt_frames(3))
    lines = path.read_text().splitlines()
    lines[-1] = "Cu 0.0 zero 0.0 0.0 0.0 0.0"  # last atom of frame 2
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"broken\.xyz, frame 2: cannot parse"):
        read_frames(path)
    path.write_text("four\n" + "\n".join(lines[1:]) + "\n")  # bad atom count in the first header
    with pytest.raises(DataError, match=r"broken\.xyz, frame 0: line 1 should be the number of"):
        read_frames(path)


def twelve_frames(path: Path, frame: int | None = None, count: str | None = None) -> Path:
    """12 extxyz frames of 4 atoms (one header, 4 atom lines: 6 lines each) in ``path``, with the
    atom-count line of ``frame`` replaced by ``count``."""
    ase.io.write(path, emt_frames(12))
    lines = path.read_text().splitlines(keepends=True)
    if frame is not None:
        lines[6 * frame] = f"{count}\n"
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize(
    ("count", "problem"),
    [
        ("5", r"the atom count on line 31 is 5, but only 4 atom lines follow \(line 37 is '4'\)"),
        ("3", r"the atom count on line 31 is 3, but more atom lines follow \(line 36\)"),
        ("four", r"line 31 should be the number of atoms, not 'four'"),
        ("4.0", r"line 31 should be the number of atoms, not '4.0'"),
    ],
)
def test_wrong_atom_count_names_the_frame_and_reading_goes_on(tmp_path, count, problem):
    path = twelve_frames(tmp_path / "count.xyz", frame=5, count=count)
    with pytest.raises(DataError, match=rf"count\.xyz, frame 5: {problem}"):
        read_frames(path)
    reference = ase.io.read(twelve_frames(tmp_path / "good.xyz"), ":")
    assert len(read_frames(path, "0:5")) == 5
    for atoms, ref in zip(read_frames(path, "6:"), reference[6:], strict=True):
        assert_same_labels(atoms, ref)  # the frames after the bad one, read and numbered right
    assert_same_labels(read_frames(path, -1)[0], reference[-1])
    with pytest.raises(DataError, match=r"frame 5: "):
        read_frames(path, "::-1")


def test_extxyz_selections_and_blank_lines_between_frames(tmp_path):
    path = twelve_frames(tmp_path / "good.xyz")
    lines = path.read_text().splitlines(keepends=True)
    reference = ase.io.read(path, ":")
    path.write_text("".join(lines[:18] + ["\n"] + lines[18:]) + "\n\n")
    for index in (":", "2:9:3", "-3:", "::-2", "10:", 4, -1):
        picked = reference[string2index(index) if isinstance(index, str) else index]
        picked = [picked] if isinstance(index, int) else picked
        frames = read_frames(path, index)
        assert len(frames) == len(picked), index
        for atoms, ref in zip(frames, picked, strict=True):
            assert_same_labels(atoms, ref)


def test_nan_forces_names_frame_and_key(tmp_path):
    path = tmp_path / "nan.xyz"
    frames = emt_frames(2)
    forces = frames[1].get_forces()
    forces[2, 1] = np.nan
    frames[1].calc = SinglePointCalculator(frames[1], energy=1.0, forces=forces)
    ase.io.write(path, frames)
    with pytest.raises(DataError, match=r"nan\.xyz, frame 1: forces contains NaN"):
        read_frames(path)
    with pytest.raises(DataError, match=r"nan\.xyz, frame 1: forces contains NaN"):
        read_frames(path, -1)  # negative index: frames still numbered from the start
    assert len(read_frames(path, 0)) == 1


def test_missing_forces_when_required(tmp_path):
    path = tmp_path / "energy_only.xyz"
    atoms = emt_frames(1)[0]
    atoms.calc = SinglePointCalculator(atoms, energy=-1.5)
    ase.io.write(path, atoms)
    with pytest.raises(DataError, match=r"energy_only\.xyz, frame 0: forces missing .*forces"):
        read_frames(path)
    (frame,) = read_frames(path, required=("energy",))
    assert frame.get_potential_energy() == -1.5 and "forces" not in frame.calc.results


def test_wrong_shape_forces(tmp_path):
    path = tmp_path / "bad.db"
    atoms = bulk("Cu", cubic=True)  # 4 atoms
    with ase.db.connect(path) as db:
        db.write(atoms, data={"my_energy": 1.0, "my_forces": np.zeros((3, 3))})
    keys = LabelKeys(energy="my_energy", forces="my_forces")
    match = r"bad\.db, frame 0: my_forces has shape \(3, 3\), expected \(4, 3\)"
    with pytest.raises(DataError, match=match):
        read_frames(path, keys=keys)


@pytest.mark.parametrize(
    ("label", "value", "message"),
    [
        (
            "energy",
            1e30,
            r"frame 1: energy 1e\+30 eV is beyond any DFT label \(above 1e\+06 eV/atom",
        ),
        ("forces", 3e5, r"frame 1: forces max \|F\| 3e\+05 eV/Å is beyond any DFT label"),
        ("stress", -5e3, r"frame 1: stress max \|stress\| 5000 eV/Å³ is beyond any DFT label"),
    ],
)
def test_absurd_labels_are_refused_naming_the_frame(tmp_path, label, value, message):
    frames = emt_frames(3)
    results = dict(frames[1].calc.results)
    if label == "energy":
        results["energy"] = value
    else:
        results[label] = np.array(results[label])
        results[label].flat[2] = value
    frames[1].calc = SinglePointCalculator(frames[1], **results)
    path = tmp_path / "absurd.xyz"
    ase.io.write(path, frames)
    with pytest.raises(DataError, match=message):
        read_frames(path)
    frames[1].calc.results[label] = np.asarray(results[label]) * 1e-4 if label != "energy" else -4e5
    ase.io.write(path, frames)
    assert len(read_frames(path)) == 3  # large but possible values are data
