"""`mlip relax | md | eval | info` from the command line: bad input gives one line, no traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk

import mlip
from mlip import cli, models
from mlip.commands import info as info_command

from .conftest import rattled_silicon


def bad_inputs(folder):
    """``name -> (file, expected words)`` for every kind of bad structure input."""
    garbled = folder / "garbled.cif"
    garbled.write_text("data_x\n_cell_length_a ten\nloop_\n_atom_site_label\nSi1 0 0\n")
    empty = folder / "empty.cif"
    empty.write_text("")
    copper = folder / "copper.extxyz"
    (bulk("Cu", "fcc", a=3.6) * 2).write(copper)
    stacked = rattled_silicon()
    stacked.positions[2] = stacked.positions[6]
    on_top = folder / "on_top.extxyz"
    stacked.write(on_top)
    lost = rattled_silicon()
    lost.positions[4, 0] = np.nan
    not_finite = folder / "not_finite.extxyz"
    lost.write(not_finite)
    flat = rattled_silicon()
    flat.set_cell([flat.cell[0], flat.cell[1], flat.cell[0] + flat.cell[1]])
    colinear = folder / "colinear.extxyz"
    flat.write(colinear)
    return {
        "missing": (folder / "absent.cif", "no such file"),
        "garbled": (garbled, "cannot parse"),
        "empty": (empty, "file is empty"),
        "unknown element": (
            copper,
            "element Cu is not known to this model, which knows H, C, O, Si",
        ),
        "on top": (on_top, "atoms 2 (Si) and 6 (Si) are 0.000 Å apart"),
        "not finite": (not_finite, "position of atom 4 is not finite"),
        "colinear cell": (colinear, "the periodic cell vectors are linearly dependent"),
    }


@pytest.mark.parametrize("command", ["relax", "md"])
@pytest.mark.parametrize(
    "case",
    ["missing", "garbled", "empty", "unknown element", "on top", "not finite", "colinear cell"],
)
def test_bad_structure_gives_one_line(command, case, model_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, words = bad_inputs(tmp_path)[case]
    status = cli.main([command, str(path), "--model", str(model_file), "--steps", "3"])
    err = capsys.readouterr().err
    assert status != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mlip {command}: error: "), err
    assert words in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["relax", "md", "eval", "info"])
def test_bad_model_file_gives_one_line(command, tmp_path, capsys):
    structure = tmp_path / "si.extxyz"
    rattled_silicon().write(structure)
    not_a_model = tmp_path / "model.pt"
    not_a_model.write_text("hello")
    for model, words in ((not_a_model, "not an mlip model file"), ("absent.pt", "no such")):
        args = [str(model)] if command == "info" else [str(structure), "--model", str(model)]
        status = cli.main([command, *args])
        err = capsys.readouterr().err
        assert status != 0
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mlip {command}: error: ")
        assert words in lines[0]


def test_missing_default_model_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    structure = tmp_path / "si.extxyz"
    rattled_silicon().write(structure)
    assert cli.main(["relax", str(structure)]) == 1
    assert "bundled model 'default'" in capsys.readouterr().err


def test_mlip_md(model_file, tmp_path, capsys):
    structure = tmp_path / "si.cif"
    rattled_silicon().write(structure)
    trajectory, log = tmp_path / "out" / "md.extxyz", tmp_path / "out" / "md.log"
    args = [str(structure), "--model", str(model_file), "--ensemble", "nvt", "--steps", "6"]
    args += ["--interval", "3", "-o", str(trajectory), "--log", str(log), "--no-progress"]
    assert cli.main(["md", *args]) == 0
    out = capsys.readouterr().out
    assert "steps/s" in out and "atom-steps/s" in out
    lines = log.read_text().splitlines()
    assert lines[0].startswith("# step") and "steps_per_s" in lines[0] and len(lines) == 4
    assert trajectory.read_text().count("Lattice=") == 3
    # the summary's final temperature is the log's (one count of degrees of freedom)
    header, last = lines[0].lstrip("# ").split(), lines[-1].split()
    logged = float(last[header.index("T_K")])
    assert f"final T {logged:.1f} K" in out


def test_mlip_md_refuses_one_atom_and_a_nan_temperature(model_file, tmp_path, capsys):
    from ase import Atoms

    single = tmp_path / "si1.extxyz"
    Atoms("Si", positions=[[0, 0, 0]]).write(single)
    assert cli.main(["md", str(single), "--model", str(model_file), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{single}: MD needs at least 2 atoms" in err and len(err.splitlines()) == 1
    two = tmp_path / "si2.extxyz"
    Atoms("Si2", positions=[[0, 0, 0], [2.3, 0, 0]]).write(two)
    assert cli.main(["md", str(two), "--model", str(model_file), "--temperature", "nan"]) == 2
    assert "--temperature must be >= 0" in capsys.readouterr().err


def test_mlip_md_names_the_file_with_an_unknown_element(model_file, tmp_path, capsys):
    from ase import Atoms

    gold = tmp_path / "au2.extxyz"
    Atoms("Au2", positions=[[0, 0, 0], [2.9, 0, 0]]).write(gold)
    assert cli.main(["md", str(gold), "--model", str(model_file), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mlip md: error: {gold}: element Au is not known") and "\n" not in err


def test_mlip_relax_writes_a_cif(model_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rattled_silicon().write("si.cif")
    status = cli.main(["relax", "si.cif", "--model", str(model_file), "--steps", "1", "-q"])
    captured = capsys.readouterr()
    assert status == 1 and "not converged in 1 steps" in captured.err  # a random model
    assert (tmp_path / "si_relaxed.cif").is_file()


def test_mlip_info(model_file, capsys):
    assert info_command.main([str(model_file)]) == 0
    out = capsys.readouterr().out
    for words in ("Facet(", "elements      H C O Si", "cutoff        4.0 Å", "train: tiny.xyz"):
        assert words in out
    assert info_command.main([str(model_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    params = sum(p.numel() for p in mlip.load_model(model_file).parameters())
    assert info["parameters"] == params and info["elements"] == ["H", "C", "O", "Si"]


def test_default_model(capsys):
    assert info_command.main([]) == 0
    assert "Si" in capsys.readouterr().out
    atoms = rattled_silicon()
    atoms.calc = mlip.MLIPCalculator()
    assert np.isfinite(atoms.get_forces()).all()


@pytest.mark.parametrize("command", ["relax", "md", "eval", "info"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: mlip {command}" in capsys.readouterr().out


def disordered_silicon_cif(path, kind: str):
    """The rattled Si cell as a P 1 CIF with one site half occupied, or two atoms on one site."""
    atoms = rattled_silicon()
    rows = []
    for k, (x, y, z) in enumerate(atoms.get_scaled_positions()):
        if kind == "duplicate" and k == 7:
            x, y, z = atoms.get_scaled_positions()[2]
        occupancy = 0.5 if kind == "partial" and k == 3 else 1.0
        rows.append(f"Si{k + 1} Si {x:.6f} {y:.6f} {z:.6f} {occupancy}")
    a, b, c, alpha, beta, gamma = atoms.cell.cellpar()
    path.write_text(
        f"data_si\n_cell_length_a {a}\n_cell_length_b {b}\n_cell_length_c {c}\n"
        f"_cell_angle_alpha {alpha}\n_cell_angle_beta {beta}\n_cell_angle_gamma {gamma}\n"
        "_symmetry_space_group_name_H-M 'P 1'\nloop_\n_atom_site_label\n_atom_site_type_symbol\n"
        "_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_occupancy\n"
        + "\n".join(rows)
        + "\n"
    )
    return path


@pytest.mark.parametrize("command", ["relax", "md"])
@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("partial", "site Si4 (Si) has occupancy 0.5; mlip needs an ordered structure"),
        ("duplicate", "atom sites Si3 (Si) and Si8 (Si) are at the same position (0 Å apart)"),
    ],
)
def test_disordered_cif_gives_one_line(command, kind, words, model_file, tmp_path, capsys):
    path = disordered_silicon_cif(tmp_path / f"{kind}.cif", kind)
    status = cli.main([command, str(path), "--model", str(model_file), "--steps", "3"])
    err = capsys.readouterr().err
    assert status != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mlip {command}: error: {path}: {words}"), err
    assert not (tmp_path / f"{kind}_relaxed.cif").exists()
