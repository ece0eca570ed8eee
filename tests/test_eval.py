"""Evaluation: error tables against labels with known errors, per config_type, and parity plots."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

import mlip
from mlip.calculator import MLIPCalculator
from mlip.commands import eval as eval_command
from mlip.sim.evaluate import errors, format_table, parity_plots, predict

from .conftest import rattled_silicon

# per config_type: energy offset (eV/atom), force offset (eV/Å), stress offset (eV/Å³)
OFFSETS = {"bulk": (0.01, 0.05, 0.002), "hot": (0.03, -0.1, -0.004)}


def labelled_frames(potential) -> list:
    """Rattled Si cells labelled with the model's own predictions plus the known ``OFFSETS``."""
    calc = MLIPCalculator(potential)
    frames = []
    for seed in range(6):
        atoms = rattled_silicon(seed)
        group = "bulk" if seed < 4 else "hot"
        de, df, ds = OFFSETS[group]
        atoms.calc = calc
        labels = {
            "energy": atoms.get_potential_energy() + de * len(atoms),
            "forces": atoms.get_forces() + df,
            "stress": atoms.get_stress() + ds,
        }
        if seed == 5:
            del labels["stress"]  # frames may lack a label
        atoms.calc = SinglePointCalculator(atoms, **labels)
        atoms.info["config_type"] = group
        frames.append(atoms)
    return frames


def test_errors_equal_the_known_offsets(potential):
    frames = labelled_frames(potential)
    pred = predict(potential, frames, batch_size=4)
    bulk, hot = errors(pred.select("bulk")), errors(pred.select("hot"))
    assert pred.groups == ["bulk", "hot"]
    assert bulk["frames"] == 4 and hot["frames"] == 2
    for table, (de, df, ds) in ((bulk, OFFSETS["bulk"]), (hot, OFFSETS["hot"])):
        for name, offset in (("energy", de), ("forces", df), ("stress", ds)):
            assert table[name]["mae"] == pytest.approx(abs(offset) * 1000, abs=1e-6)
            assert table[name]["rmse"] == pytest.approx(abs(offset) * 1000, abs=1e-6)
    assert hot["stress"]["count"] == 6  # one frame of the two has stress
    every = errors(pred)
    assert every["energy"]["mae"] == pytest.approx((4 * 10 + 2 * 30) / 6, abs=1e-6)
    assert every["energy"]["rmse"] == pytest.approx(np.sqrt((4 * 100 + 2 * 900) / 6), abs=1e-6)
    assert every["forces"]["count"] == 6 * 8 * 3
    text = format_table({"all": every, "  bulk": bulk})
    assert "meV/atom" in text and "meV/Å" in text and "meV/Å³" in text


def test_parity_plots_are_png(potential, tmp_path):
    pred = predict(potential, labelled_frames(potential))
    written = parity_plots(pred, tmp_path / "plots" / "si", title="si")
    assert [p.name for p in written] == ["si_energy.png", "si_forces.png", "si_stress.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_mlip_eval(model_file, tmp_path, capsys):
    potential = mlip.load_model(model_file)
    data = tmp_path / "si.extxyz"
    ase.io.write(data, labelled_frames(potential))
    report = tmp_path / "errors.json"
    plots = tmp_path / "plots"
    status = eval_command.main(
        [str(data), "--model", str(model_file), "--plots", str(plots), "--json", str(report)]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "bulk" in out and "hot" in out and "[meV/atom]" in out
    result = json.loads(report.read_text())
    row = result["files"][str(data)]["bulk"]
    assert row["energy"]["mae"] == pytest.approx(10.0, abs=1e-6)
    assert result["units"]["forces"] == "meV/Å"
    assert sorted(p.name for p in plots.iterdir()) == [
        "si_energy.png",
        "si_forces.png",
        "si_stress.png",
    ]


def test_mlip_eval_counts_only_labelled_frames(model_file, tmp_path, capsys):
    potential = mlip.load_model(model_file)
    frames = labelled_frames(potential)
    bare = rattled_silicon(9)  # no labels: nothing to score
    bare.info["config_type"] = "bulk"
    data = tmp_path / "si.extxyz"
    ase.io.write(data, [*frames[:2], bare, *frames[2:]])
    report = tmp_path / "errors.json"
    status = eval_command.main(
        [str(data), "--model", str(model_file), "--no-plots", "--json", str(report)]
    )
    assert status == 0
    assert f"{data}: 6 frames (1 without labels left out)" in capsys.readouterr().out
    rows = json.loads(report.read_text())["files"][str(data)]
    assert (rows["all"]["frames"], rows["bulk"]["frames"], rows["hot"]["frames"]) == (6, 4, 2)


def test_mlip_eval_refuses_atoms_on_top_of_each_other(model_file, tmp_path, capsys):
    potential = mlip.load_model(model_file)
    frames = labelled_frames(potential)
    frames[3].positions[6] = frames[3].positions[2]
    data = tmp_path / "si.extxyz"
    ase.io.write(data, frames)
    status = eval_command.main([str(data), "--model", str(model_file), "--no-plots"])
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert err == (
        f"mlip eval: error: {data}, frame 3: atoms 2 (Si) and 6 (Si) are 0.000 Å apart, "
        "closer than the minimum distance 0.5 Å"
    )


def test_mlip_eval_refuses_a_file_without_labels(model_file, tmp_path, capsys):
    data = tmp_path / "bare.extxyz"
    ase.io.write(data, [rattled_silicon(1), rattled_silicon(2)])
    status = eval_command.main([str(data), "--model", str(model_file), "--no-plots"])
    assert status == 1
    assert capsys.readouterr().err.strip() == (
        f"mlip eval: error: {data}: no frame has energy, forces or stress labels "
        "(looked for 'energy', 'forces', 'stress')"
    )
