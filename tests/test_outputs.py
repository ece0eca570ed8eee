"""Outputs that cannot be written are one line naming the path and the option, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlip import cli

from .conftest import TINY_RUN, rattled_silicon

ROOT = Path(__file__).resolve().parent.parent
SI = ROOT / "data/zuo2020/Si_train.xyz"


@pytest.fixture
def places(tmp_path):
    """A structure, a plain file (nothing can be created below it) and an existing folder."""
    structure = tmp_path / "si.extxyz"
    rattled_silicon().write(structure)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    return structure, blocker, folder


def one_line_error(capsys, prog: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mlip {prog}: error: "), captured.err
    return lines[0] + "\n" + captured.out


@pytest.mark.parametrize(
    ("command", "option", "target", "message"),
    [
        ("relax", "-o", "blocked", "blocker: is a file, not a folder (-o/--output)"),
        ("relax", "-o", "folder", "folder: is a directory (-o/--output takes a file name)"),
        ("relax", "--traj", "blocked", "blocker: is a file, not a folder (--traj)"),
        ("md", "-o", "blocked", "blocker: is a file, not a folder (-o/--output)"),
        ("md", "-o", "folder", "folder: is a directory (-o/--output takes a file name)"),
        ("md", "--log", "blocked", "blocker: is a file, not a folder (--log)"),
    ],
)
def test_simulation_outputs_are_checked_before_the_work(
    command, option, target, message, places, model_file, capsys, monkeypatch
):
    structure, blocker, folder = places
    monkeypatch.chdir(structure.parent)
    path = blocker / "out.extxyz" if target == "blocked" else folder
    status = cli.main([command, str(structure), "--model", str(model_file), option, str(path)])
    text = one_line_error(capsys, command)
    assert status == 1 and message in text
    assert "converged" not in text and "step" not in text  # nothing ran
    assert not list(structure.parent.glob("si_*"))  # no default-named output either


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("out_folder/", "out_folder/: a folder name (-o/--output takes a file name)"),
        ("relaxed", "relaxed: ASE cannot tell a structure format it writes from this name"),
        ("relaxed.nosuchformat", "ASE cannot tell a structure format it writes from this name"),
    ],
)
def test_relax_output_name_ase_cannot_write_is_refused_first(
    name, message, places, model_file, capsys, monkeypatch
):
    structure, _, _ = places
    monkeypatch.chdir(structure.parent)
    status = cli.main(["relax", str(structure), "--model", str(model_file), "-o", name])
    text = one_line_error(capsys, "relax")
    assert status == 1 and message in text
    assert "FIRE" not in text  # refused before the relaxation started


def test_relax_of_several_structures_checks_every_output_first(places, model_file, capsys):
    structure, blocker, _ = places
    status = cli.main(
        ["relax", str(structure), str(structure), "--model", str(model_file), "-o", str(blocker)]
    )
    assert status == 1
    assert "blocker: is a file, not a folder (-o/--output)" in one_line_error(capsys, "relax")


@pytest.mark.parametrize(
    ("option", "message"),
    [("--json", "(--json)"), ("--plots", "(--plots)")],
)
def test_eval_outputs_are_checked_before_the_work(option, message, places, model_file, capsys):
    _, blocker, _ = places
    target = blocker / ("errors.json" if option == "--json" else "plots")
    argv = ["eval", str(SI), "--index", "0:2", "--model", str(model_file), option, str(target)]
    status = cli.main(argv)
    text = one_line_error(capsys, "eval")
    assert status == 1 and f"blocker: is a file, not a folder {message}" in text
    assert "MAE" not in text


def test_export_output_is_checked_first(places, tmp_path, capsys):
    _, blocker, folder = places
    status = cli.main(["export", str(tmp_path / "run"), "--output", str(blocker / "m.pt")])
    assert status == 2
    assert "blocker: is a file, not a folder (--output)" in one_line_error(capsys, "export")
    assert cli.main(["export", str(tmp_path / "run"), "--output", str(folder)]) == 2
    assert "folder: is a directory (--output takes a file name)" in capsys.readouterr().err


def test_train_run_directory_that_cannot_be_created_is_one_line(places, capsys):
    _, blocker, _ = places
    run = blocker / "run"
    status = cli.main(["train", f"run_dir={run}", *TINY_RUN])
    assert status == 2
    text = one_line_error(capsys, "train")
    assert f"run directory {run}: cannot write there" in text
