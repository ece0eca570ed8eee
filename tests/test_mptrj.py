"""MPtrj JSON reader: a small MPtrj-style file built from real Si frames, read back label by label."""

import json
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from ase import units
from ase.stress import voigt_6_to_full_3x3_stress

from mlip.data.mptrj import KBAR_VASP_TO_EV_A3, is_mptrj
from mlip.data.readers import read_frames
from mlip.data.records import LabelKeys
from mlip.data.stats import scan_files
from mlip.errors import DataError

pymatgen = pytest.importorskip("pymatgen.core")  # an optional dependency: MPtrj only
Lattice, Structure = pymatgen.Lattice, pymatgen.Structure
SI_XYZ = Path(__file__).parent.parent / "data" / "zuo2020" / "Si_train.xyz"
CORRECTION = -0.25  # eV per frame: a made-up MP2020-style correction, to tell the labels apart


def mptrj_frame(atoms, magmom=True):
    """One MPtrj record of an ASE frame: pymatgen structure dict, energies, forces, VASP stress."""
    structure = Structure(
        Lattice(atoms.cell.array), atoms.get_chemical_symbols(), atoms.positions,
        coords_are_cartesian=True,
    )  # fmt: skip
    energy = atoms.get_potential_energy()
    stress_kbar = -voigt_6_to_full_3x3_stress(atoms.get_stress()) / (0.1 * units.GPa)
    n = len(atoms)
    return {
        "structure": structure.as_dict(),
        "uncorrected_total_energy": energy,
        "corrected_total_energy": energy + CORRECTION,
        "energy_per_atom": (energy + CORRECTION) / n,
        "ef_per_atom": -0.1,
        "force": atoms.get_forces().tolist(),
        "stress": stress_kbar.tolist(),
        "magmom": np.linspace(0.0, 1.0, n).tolist() if magmom else None,
        "bandgap": 0.5,
        "mp_id": "mp-149",
    }


@pytest.fixture(scope="module")
def reference():
    return read_frames(SI_XYZ, "0:5")


@pytest.fixture(scope="module")
def mptrj_file(tmp_path_factory, reference):
    """Five Si frames under two mp ids; frame 3 has a null magmom."""
    frames = [mptrj_frame(a, magmom=(i != 3)) for i, a in enumerate(reference)]
    content = {
        "mp-149": {f"task-{i}-calc-{i}": frames[i] for i in range(3)},
        "mp-999": {f"task-{i}-calc-0": frames[i] for i in range(3, 5)},
    }
    path = tmp_path_factory.mktemp("mptrj") / "mptrj.json"
    path.write_text(json.dumps(content))
    return path


def test_round_trip_every_label_and_unit(mptrj_file, reference):
    frames = read_frames(mptrj_file)
    assert len(frames) == 5
    for i, (atoms, ref) in enumerate(zip(frames, reference, strict=True)):
        np.testing.assert_array_equal(atoms.numbers, ref.numbers)
        np.testing.assert_allclose(atoms.cell.array, ref.cell.array, rtol=0, atol=1e-10)
        np.testing.assert_allclose(atoms.positions, ref.positions, rtol=0, atol=1e-10)
        assert atoms.pbc.all()
        assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), rtol=0, atol=1e-10)
        if i == 3:
            assert "magmom" not in atoms.arrays
        else:
            np.testing.assert_allclose(atoms.arrays["magmom"], np.linspace(0, 1, len(atoms)))
        assert atoms.info["bandgap"] == 0.5 and atoms.info["ef_per_atom"] == -0.1
    assert [a.info["mp_id"] for a in frames] == ["mp-149"] * 3 + ["mp-999"] * 2
    assert frames[4].info["frame_id"] == "task-4-calc-0"


def test_stress_sign_and_units():
    # 10 kBar of VASP (compressive) stress is -1 GPa in ASE's tensile-positive convention
    assert 10 * KBAR_VASP_TO_EV_A3 == pytest.approx(-1 * units.GPa, rel=1e-15)
    assert units.GPa == pytest.approx(1 / 160.21766, rel=1e-6)


def test_energy_label_choice(mptrj_file, reference):
    energies = [a.get_potential_energy() for a in reference]
    for label, shift in [
        ("uncorrected_total_energy", 0.0),
        ("corrected_total_energy", CORRECTION),
        ("energy_per_atom", CORRECTION),  # per atom times the atom count
    ]:
        frames = read_frames(mptrj_file, keys=LabelKeys(energy=label))
        got = [a.get_potential_energy() for a in frames]
        np.testing.assert_allclose(got, np.array(energies) + shift, rtol=0, atol=1e-9)
    with pytest.raises(DataError, match="MPtrj energy label must be one of"):
        read_frames(mptrj_file, keys=LabelKeys(energy="total_energy"))


def test_selection_follows_file_order(mptrj_file):
    assert [a.info["frame_id"] for a in read_frames(mptrj_file, "1:4")] == [
        "task-1-calc-1",
        "task-2-calc-2",
        "task-3-calc-0",
    ]
    (last,) = read_frames(mptrj_file, -1)
    assert last.info["frame_id"] == "task-4-calc-0"
    assert [a.info["frame_id"] for a in read_frames(mptrj_file, "::-2")][0] == "task-4-calc-0"


def test_missing_force_named_and_skippable(tmp_path, reference):
    frames = {f"f{i}": mptrj_frame(a) for i, a in enumerate(reference[:3])}
    frames["f1"]["force"] = None
    frames["f2"]["stress"][0][0] = float("nan")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"mp-1": frames}))
    with pytest.raises(DataError, match=r"bad\.json, frame 1: forces missing"):
        read_frames(path)
    stats = scan_files([path], cutoff=3.0, on_error="skip", progress=False)
    assert stats.num_frames == 1 and stats.num_bad == 2
    assert "frame 1: forces missing" in stats.bad[0]
    assert "frame 2: stress contains NaN" in stats.bad[1]


def test_ase_json_database_still_read_by_ase(tmp_path, reference):
    path = tmp_path / "frames.json"
    with ase.db.connect(path, type="json") as db:
        for atoms in reference[:2]:
            db.write(atoms)
    assert not is_mptrj(path)
    frames = read_frames(path)
    assert len(frames) == 2
    assert frames[1].get_potential_energy() == reference[1].get_potential_energy()
