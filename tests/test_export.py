"""Model files: round trip, atomic writes, and clear errors for bad files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import mlip
from mlip.data import atoms_to_batch
from mlip.errors import ModelFileError, NonFiniteOutputError
from mlip.export import FORMAT_VERSION, read_model_file

from .conftest import CUTOFF, ethanol, rattled_silicon

DATA = Path(__file__).with_name("data")


def test_round_trip_gives_same_predictions(potential, tmp_path):
    path = mlip.save_model(potential, tmp_path / "model.pt", metadata={"note": "test"})
    loaded = mlip.load_model(path)
    batch = atoms_to_batch([rattled_silicon(), ethanol()], CUTOFF, dtype=torch.float64)
    a = potential(batch, forces=True, stress=True)
    b = loaded(batch, forces=True, stress=True)
    for key in ("energy", "forces", "stress"):
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-12)
    assert loaded.metadata == {"note": "test"}
    assert loaded.elements == ["H", "C", "O", "Si"]
    assert not any(p.requires_grad is False for p in loaded.parameters())
    assert read_model_file(path)["dtype"] == "float64"
    as32 = mlip.load_model(path, dtype="float32")
    assert as32.e0.dtype == torch.float32
    e32 = as32(atoms_to_batch([ethanol()], CUTOFF), forces=False)["energy"]
    assert abs(float(e32[0]) - float(a["energy"][1])) < 1e-4 * abs(float(a["energy"][1]))


def test_missing_truncated_and_foreign_files(potential, tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        mlip.load_model(tmp_path / "absent.pt")
    path = mlip.save_model(potential, tmp_path / "model.pt")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt, truncated"):
        mlip.load_model(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelFileError, match="not an mlip model file"):
        mlip.load_model(foreign)


class Payload:
    """A class a pickle would have to import and run to load."""


@pytest.mark.parametrize("content", ["random bytes", "pickled object"])
def test_unreadable_files_never_suggest_the_unsafe_loader(potential, tmp_path, content):
    path = tmp_path / "model.pt"
    if content == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        torch.save({"format": "mlip-model", "payload": Payload()}, path)
    with pytest.raises(ModelFileError, match="not an mlip model file") as caught:
        mlip.load_model(path)
    assert "weights_only" not in str(caught.value) and str(path) in str(caught.value)


def _tampered(potential, tmp_path, change) -> Path:
    path = mlip.save_model(potential, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.pop("format_version"), "no format_version"),
        (lambda p: p.update(species=[14, 999]), r"species \[14, 999\] are not distinct"),
        (lambda p: p.update(cutoff=-1.0), "cutoff -1.0 is not a positive number"),
        (lambda p: p.update(dtype="float16"), "dtype 'float16'"),
        (lambda p: p["model_config"].update(channels="many"), "model_config does not build"),
        (lambda p: p["model_config"].update(bogus=1), "model_config does not build"),
        (lambda p: p["state_dict"]["e0"].fill_(float("nan")), r"non-finite .* e\.g\. e0"),
    ],
    ids=["no version", "species", "cutoff", "dtype", "config value", "config key", "NaN"],
)
def test_crafted_files_get_one_clear_error(potential, tmp_path, change, message):
    path = _tampered(potential, tmp_path, change)
    with pytest.raises(ModelFileError, match=message):
        mlip.load_model(path)


def test_non_finite_model_output_stops_the_calculator(potential):

    with torch.no_grad():
        next(potential.model.parameters()).fill_(float("nan"))
    atoms = rattled_silicon()
    atoms.calc = mlip.MLIPCalculator(potential)
    with pytest.raises(NonFiniteOutputError, match="not finite .* 8-atom Si8"):
        atoms.get_potential_energy()


def test_newer_format_is_refused(potential, tmp_path):
    path = mlip.save_model(potential, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    payload["mlip_version"] = "9.0.0"
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="mlip 9.0.0 .* format 99.*Upgrade"):
        mlip.load_model(path)


def test_save_is_atomic(potential, tmp_path, monkeypatch):
    """A crash during the write leaves the previous file intact and no temporary behind."""
    path = mlip.save_model(potential, tmp_path / "model.pt")
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        mlip.save_model(potential, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_saved_files_are_as_readable_as_any_other(potential, tmp_path):
    """An atomic save gives the file a plain ``open``'s permissions (0o666 less the umask), not
    the owner-only 0o600 of its temporary file."""
    umask = os.umask(0o022)
    try:
        path = mlip.save_model(potential, tmp_path / "model.pt")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize("name", ["silu", "poly2_degree3"])
def test_format1_facet_files_load_with_their_energies(name, tmp_path):
    """Files written by mlip 0.1.0 (format 1, whose Facet last layer also had unused l > 0
    outputs; both layers divided the l > 0 features by their own RMS) load with the energies and
    forces they were written with, warn that such a Facet is not smooth at symmetric structures,
    and save in the current format with that norm kept."""
    from ase import Atoms

    path = DATA / f"facet_format1_{name}.pt"
    raw = read_model_file(path)
    assert raw["format_version"] == 1 and "model.norms.1.scales.1" in raw["state_dict"]
    reference = raw["metadata"]["reference"]
    atoms = Atoms(reference["numbers"], positions=reference["positions"])
    for source in (path, tmp_path / "again.pt"):
        with pytest.warns(UserWarning, match="not smooth at perfect crystals"):
            potential = mlip.load_model(source)
        assert potential.model.config["vector_floor"] == 0
        atoms.calc = mlip.MLIPCalculator(potential)
        assert abs(atoms.get_potential_energy() - reference["energy_eV"]) < 1e-10
        forces = np.asarray(reference["forces_eV_per_A"])
        assert np.abs(atoms.get_forces() - forces).max() < 1e-10
        mlip.save_model(potential, tmp_path / "again.pt", potential.metadata)
    assert read_model_file(tmp_path / "again.pt")["format_version"] == FORMAT_VERSION


def test_bundled_models_load_by_name_unless_a_file_has_that_name(model_file, tmp_path, monkeypatch):
    from mlip import models

    assert mlip.load_model("si").elements == ["Si"]
    assert models.model_file(None) == models.MODELS_DIR / "si.pt"  # until the universal lands
    monkeypatch.chdir(tmp_path)
    (tmp_path / "si").write_bytes(model_file.read_bytes())  # a user's file called "si"
    assert mlip.load_model("si").elements == ["H", "C", "O", "Si"]
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path / "nothing")
    with pytest.raises(ModelFileError, match=r"bundled model 'default' .* is missing"):
        mlip.load_model("default")
    with pytest.raises(ModelFileError, match="no such model file"):
        mlip.load_model("sí.pt")
