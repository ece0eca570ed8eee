"""Relaxation: the library function with EMT, and `mlip relax` with a trained model."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.spacegroup import crystal
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from mlip.calculator import MLIPCalculator
from mlip.commands import relax as relax_command
from mlip.errors import StructureFileError
from mlip.sim.io import read_structure
from mlip.sim.relax import relax

from .test_md import copper, trained_copper_model


def largest_force(atoms) -> float:
    return float(np.sqrt((atoms.get_forces() ** 2).sum(axis=1)).max())


def largest_stress_GPa(atoms) -> float:
    return float(np.abs(atoms.get_stress()).max() / 0.006241509074460763)


@pytest.mark.parametrize("optimizer", ["FIRE", "BFGS", "LBFGS"])
def test_relax_with_emt_reaches_the_thresholds(optimizer):
    """The same code path as `mlip relax`, with ASE's EMT as a cheap reference potential."""
    atoms = copper((2, 1, 1), strain=0.03, rattle=0.1, seed=2)
    steps = []
    result = relax(
        atoms, EMT(), fmax=0.02, smax_GPa=0.05, optimizer=optimizer, callback=steps.append
    )
    assert result.converged
    relaxed = result.atoms
    assert largest_force(relaxed) <= 0.02
    assert largest_stress_GPa(relaxed) <= 0.05
    assert [s.step for s in steps] == list(range(len(steps)))
    assert steps[-1].energy < steps[0].energy
    # EMT copper relaxes to an fcc cell of a = 3.59 Å (4 atoms in a^3)
    assert relaxed.get_volume() / len(relaxed) == pytest.approx(3.5898**3 / 4, rel=3e-3)
    assert not np.allclose(atoms.positions, relaxed.positions)  # the input is left alone


def test_fixed_cell_and_trajectory(tmp_path):
    atoms = copper((2, 1, 1), strain=0.03, rattle=0.1, seed=2)
    result = relax(atoms, EMT(), fmax=0.02, relax_cell=False, trajectory=tmp_path / "r.extxyz")
    assert result.converged and result.last.smax_GPa is None
    assert np.array_equal(result.atoms.cell.array, atoms.cell.array)
    frames = ase.io.read(tmp_path / "r.extxyz", ":")
    assert len(frames) == result.last.step + 1
    assert frames[-1].get_potential_energy() == pytest.approx(result.last.energy)
    assert "stress" in frames[-1].calc.results


def test_mlip_relax_reaches_fmax_and_stress(tmp_path, capsys):
    """`mlip relax` on a rattled, strained periodic cell: converged, and the file reloads."""
    model = trained_copper_model()
    source = tmp_path / "strained.cif"
    copper((2, 1, 1), strain=0.04, rattle=0.15, seed=3).write(source)
    output = tmp_path / "relaxed.cif"
    status = relax_command.main(
        [str(source), "--model", str(model), "-o", str(output), "--fmax", "0.02", "--smax", "0.05"]
        + ["--traj", str(tmp_path / "relax.extxyz")]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "converged in" in out and "stress/GPa" in out
    relaxed = read_structure(output)
    assert len(relaxed) == 8
    relaxed.calc = MLIPCalculator(model)
    # the CIF keeps fractional coordinates to 1e-5 or so, slightly perturbing the minimum
    assert largest_force(relaxed) < 0.03
    assert largest_stress_GPa(relaxed) < 0.06
    start = read_structure(source)
    start.calc = MLIPCalculator(model)
    assert largest_force(start) > 0.5 and largest_stress_GPa(start) > 1.0
    frames = ase.io.read(tmp_path / "relax.extxyz", ":")
    assert frames[-1].get_potential_energy() < frames[0].get_potential_energy()


def test_mlip_relax_several_files_and_no_convergence(tmp_path, capsys):
    model = trained_copper_model()
    names = []
    for seed in (4, 5):
        names.append(str(tmp_path / f"cu{seed}.extxyz"))
        copper((1, 1, 1), strain=0.03, rattle=0.1, seed=seed).write(names[-1])
    outdir = tmp_path / "out"
    status = relax_command.main([*names, "--model", str(model), "-o", str(outdir), "--steps", "2"])
    captured = capsys.readouterr()
    assert status == 1
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and all("not converged in 2 steps" in e for e in errors)
    assert sorted(p.name for p in outdir.iterdir()) == ["cu4_relaxed.extxyz", "cu5_relaxed.extxyz"]


NACL_ROWS = [  # rocksalt NaCl, conventional cell: (label, element, fractional position)
    ("Na1", "Na", (0, 0, 0)), ("Cl1", "Cl", (0.5, 0, 0)),
    ("Na2", "Na", (0, 0.5, 0.5)), ("Cl2", "Cl", (0.5, 0.5, 0.5)),
    ("Na3", "Na", (0.5, 0, 0.5)), ("Cl3", "Cl", (0, 0, 0.5)),
    ("Na4", "Na", (0.5, 0.5, 0)), ("Cl4", "Cl", (0, 0.5, 0)),
]  # fmt: skip


def write_cif(path, rows, space_group="P 1", a=5.64):
    """A cubic CIF with ``rows`` of ``(label, element, fractional position[, occupancy])``."""
    lines = [
        "data_test",
        *(f"_cell_length_{x} {a}" for x in "abc"),
        *(f"_cell_angle_{x} 90" for x in ("alpha", "beta", "gamma")),
        f"_symmetry_space_group_name_H-M '{space_group}'",
        "loop_",
        *(f"_atom_site_{key}" for key in ("label", "type_symbol", "fract_x", "fract_y")),
        "_atom_site_fract_z",
        "_atom_site_occupancy",
    ]
    for label, element, (x, y, z), *occupancy in rows:
        lines.append(f"{label} {element} {x} {y} {z} {occupancy[0] if occupancy else 1.0}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_structure_refuses_partial_occupancy(tmp_path):
    rows = [row + (0.5,) if row[0] == "Na2" else row for row in NACL_ROWS]
    with pytest.raises(
        StructureFileError, match=r"half\.cif: site Na2 \(Na\) has occupancy 0\.5; "
    ):
        read_structure(write_cif(tmp_path / "half.cif", rows))
    rows.insert(3, ("K2", "K", (0, 0.5, 0.5), 0.5))  # K shares the Na2 site
    with pytest.raises(
        StructureFileError,
        match=r"mixed\.cif: sites Na2 \(Na, occupancy 0\.5\) and K2 \(K, occupancy 0\.5\) share "
        r"one position; mlip needs an ordered structure: make one first, e\.g\. with pymatgen's "
        r"OrderDisorderedStructureTransformation",
    ):
        read_structure(write_cif(tmp_path / "mixed.cif", rows))
    # a space group ASE does not know sends the file to pymatgen, which keeps the occupancy too
    rows = [("Na1", "Na", (0, 0, 0), 0.5), ("Cl1", "Cl", (0.5, 0.5, 0.5))]
    path = write_cif(tmp_path / "odd.cif", rows, space_group="F 1 m -3 m 1 x")
    with pytest.raises(
        StructureFileError, match=r"odd\.cif: site Na1 is partly occupied \(Na 0\.5"
    ):
        read_structure(path)


def test_read_structure_refuses_two_atoms_on_one_site(tmp_path):
    rows = [("Cl4", "Cl", (0, 0, 0)) if row[0] == "Cl4" else row for row in NACL_ROWS]
    with pytest.raises(
        StructureFileError,
        match=r"on_top\.cif: atom sites Na1 \(Na\) and Cl4 \(Cl\) are at the same position "
        r"\(0 Å apart\): remove one of them",
    ):
        read_structure(write_cif(tmp_path / "on_top.cif", rows))
    rows = [("Cl4", "Cl", (1.0, 0.0, 1e-5)) if row[0] == "Cl4" else row for row in NACL_ROWS]
    rows[0] = ("Cl0", "Cl", (0, 0, 0))  # the same element, and across the cell boundary
    with pytest.raises(
        StructureFileError, match=r"sites Cl0 \(Cl\) and Cl4 \(Cl\) are at the same"
    ):
        read_structure(write_cif(tmp_path / "twice.cif", rows))
    # with symmetry: Cl listed at the face-centring image of Na
    rows = [("Na1", "Na", (0, 0, 0)), ("Cl1", "Cl", (0.5, 0.5, 0.5)), ("Cl2", "Cl", (0.5, 0.5, 0))]
    with pytest.raises(
        StructureFileError,
        match=r"atom sites Na1 \(Na\) and Cl2 \(Cl\) are on symmetry-equivalent positions",
    ):
        read_structure(write_cif(tmp_path / "fcc.cif", rows, space_group="F m -3 m"))


def test_read_structure_keeps_every_atom_of_ordered_cifs(tmp_path):
    nacl = read_structure(write_cif(tmp_path / "p1.cif", NACL_ROWS))
    assert len(nacl) == 8 and nacl.get_chemical_formula() == "Cl4Na4"
    rows = [("Na1", "Na", (0, 0, 0)), ("Cl1", "Cl", (0.5, 0.5, 0.5))]
    assert len(read_structure(write_cif(tmp_path / "fm3m.cif", rows, "F m -3 m"))) == 8
    rows.append(("Na2", "Na", (0.5, 0.5, 0)))  # listed again at its own image: merged
    assert len(read_structure(write_cif(tmp_path / "listed.cif", rows, "F m -3 m"))) == 8
    rutile = crystal(
        ["Ti", "O"],
        [(0, 0, 0), (0.3, 0.3, 0)],
        spacegroup=136,
        cellpar=[4.6, 4.6, 2.95, 90, 90, 90],
    )
    crystals = {
        "si": bulk("Si", "diamond", a=5.43, cubic=True),
        "nacl": bulk("NaCl", "rocksalt", a=5.64, cubic=True),
        "rutile": rutile,
        "wurtzite": crystal(
            ["Zn", "O"],
            [(1 / 3, 2 / 3, 0), (1 / 3, 2 / 3, 0.382)],
            spacegroup=186,
            cellpar=[3.25, 3.25, 5.2, 90, 90, 120],
        ),
    }
    for name, atoms in crystals.items():
        ase.io.write(tmp_path / f"{name}.cif", atoms)  # P 1, every atom listed
        assert len(read_structure(tmp_path / f"{name}.cif")) == len(atoms), name
        symmetric = tmp_path / f"{name}_symmetric.cif"  # the asymmetric unit and its operations
        CifWriter(AseAtomsAdaptor.get_structure(atoms), symprec=0.01).write_file(symmetric)
        assert "_symmetry_equiv_pos_as_xyz" in symmetric.read_text()
        assert len(read_structure(symmetric)) == len(atoms), name
