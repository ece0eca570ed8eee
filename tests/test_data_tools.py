"""Streaming statistics against direct numpy computations, bad-frame handling, conversion, CLI."""

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.commands.data import main
from mlip.data.convert import convert
from mlip.data.graph import atoms_to_graph
from mlip.data.lmdb import GraphLMDBDataset
from mlip.data.readers import LMDBDataset, dataset_graphs, file_graphs, read_frames, records
from mlip.data.stats import StatisticsPass, scan_files
from mlip.errors import DataError

DATA = Path(__file__).parent.parent / "data"
SAMPLES = DATA / "aselmdb_samples"
SI_XYZ = DATA / "zuo2020" / "Si_train.xyz"
CUTOFF = 4.0


def streaming_statistics(dataset, **kwargs):
    """One statistics pass over a dataset of graphs (as the DataModule makes it)."""
    accumulator = StatisticsPass()
    for _, where, graph in dataset_graphs(dataset, **kwargs):
        accumulator.add(graph, where)
    return accumulator.result()


@pytest.fixture(scope="module")
def frames():
    """20 Si cells and 20 3BPA molecules: two compositions, so every E0 is determined."""
    si = read_frames(SI_XYZ, "0:200:10")
    bpa = read_frames(SAMPLES / "3bpa_train_300K_first64.aselmdb", "0:20")
    return si + bpa


def test_streaming_stats_match_direct(frames):
    graphs = [atoms_to_graph(a, CUTOFF, torch.float64, labels=True) for a in frames]
    stats = streaming_statistics(graphs, progress=False)
    elements = [1, 6, 7, 8, 14]
    x = np.array([[np.sum(a.numbers == z) for z in elements] for a in frames], dtype=float)
    y = np.array([a.get_potential_energy() for a in frames])
    e0, *_ = np.linalg.lstsq(x, y, rcond=None)
    assert stats.species == elements
    # the 3BPA stoichiometry is fixed, so only its sum is determined: compare predictions
    np.testing.assert_allclose(x @ stats.e0, x @ e0, rtol=1e-9)  # stats.species == elements
    assert stats.e0_residual_rms == pytest.approx(np.sqrt(np.mean((y - x @ e0) ** 2)), rel=1e-5)
    assert stats.e0[stats.species.index(14)] == pytest.approx(e0[4], rel=1e-9)
    forces = np.concatenate([a.get_forces() for a in frames])
    assert stats.force_rms == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-12)
    norms = np.linalg.norm(forces, axis=1)
    assert stats.force_norm["max"] == norms.max()
    for q in (50, 90, 99, 99.9):  # histogram percentiles: the upper edge of a 2.3 % bin
        exact = np.percentile(norms, q, method="inverted_cdf")
        assert exact <= stats.force_norm[f"p{q:g}"] <= exact * 10 ** (10 / 1000)
    edges = sum(g.edge_index.shape[1] for g in graphs)
    assert stats.avg_num_neighbors == pytest.approx(edges / sum(len(a) for a in frames))
    per_atom = y / np.array([len(a) for a in frames])
    assert stats.energy_per_atom["min"] == pytest.approx(per_atom.min())
    assert stats.energy_per_atom["mean"] == pytest.approx(per_atom.mean())
    assert stats.element_counts[14] == sum(len(a) for a in frames[:20])
    assert stats.element_counts[1] == 20 * 12 and stats.num_frames == 40
    assert stats.frames_with == {"energy": 40, "forces": 40, "stress": 20}
    assert stats.charges == {0.0: 40}
    distances = [a.get_all_distances(mic=True)[np.triu_indices(len(a), 1)].min() for a in frames]
    assert stats.min_distance == pytest.approx(min(distances))


def test_seeded_sample_of_a_lazy_dataset():
    with LMDBDataset(SAMPLES, CUTOFF, dtype=torch.float64) as dataset:
        first = streaming_statistics(dataset, max_frames=30, seed=1, progress=False)
        again = streaming_statistics(dataset, max_frames=30, seed=1, progress=False)
        other = streaming_statistics(dataset, max_frames=30, seed=2, progress=False)
    assert first.num_frames == 30 and first.as_dict() == again.as_dict()
    assert first.element_counts != other.element_counts


def bad_file(path):
    """Five frames: 1 has no forces, 2 a NaN energy, 3 an unknown element (X), 4 an outlier."""
    frames = []
    for i in range(5):
        atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        atoms.rattle(0.01, seed=i)
        forces = np.full((3, 3), 0.1)
        if i == 3:
            atoms.numbers[2] = 0
        if i == 4:
            forces[1, 0] = 80.0
        atoms.calc = SinglePointCalculator(
            atoms, energy=np.nan if i == 2 else -14.0 - i, forces=None if i == 1 else forces
        )
        frames.append(atoms)
    ase.io.write(path, frames)
    return path


def test_bad_frames_skipped_counted_or_raised(tmp_path):
    path = bad_file(tmp_path / "bad.xyz")
    stats = scan_files([path], cutoff=3.0, force_threshold=50.0, progress=False)
    assert stats.num_frames == 2 and stats.num_bad == 3
    assert stats.bad == [
        f"{path}, frame 1: forces missing (looked for 'forces')",
        f"{path}, frame 2: energy contains NaN or inf",
        f"{path}, frame 3: unknown element(s) X",
    ]
    assert stats.num_outliers == 1 and "frame 4: max |F| 80 eV/Å above 50" in stats.outliers[0]
    with pytest.raises(DataError, match=r"bad\.xyz, frame 1: forces missing"):
        scan_files([path], cutoff=3.0, on_error="raise", progress=False)
    only_h = scan_files([path], cutoff=3.0, elements=[1], progress=False)
    assert only_h.num_frames == 0 and "unknown element(s) O" in only_h.bad[0]


def test_convert_round_trip_keeps_labels_and_info(tmp_path):
    source = tmp_path / "mixed.xyz"
    reference = read_frames(SI_XYZ, "0:3") + read_frames(
        SAMPLES / "3bpa_train_300K_first64.aselmdb", "0:2"
    )
    reference[1].info["charge"], reference[1].info["spin"] = -1.0, 2.0
    ase.io.write(source, reference)
    chain = [source, tmp_path / "a.aselmdb", tmp_path / "b.db", tmp_path / "c.extxyz"]
    for src, dst in zip(chain, chain[1:], strict=False):
        assert convert(src, dst, progress=False)[0] == 5
        frames = read_frames(dst, required=())
        for atoms, ref in zip(frames, reference, strict=True):
            np.testing.assert_allclose(atoms.positions, ref.positions, rtol=0, atol=1e-12)
            assert atoms.get_potential_energy() == ref.get_potential_energy()
            np.testing.assert_array_equal(atoms.get_forces(), ref.get_forces())
            assert ("stress" in atoms.calc.results) == ("stress" in ref.calc.results)
            for key in ("config_type", "charge", "spin"):
                assert atoms.info.get(key) == ref.info.get(key), (dst, key)
        np.testing.assert_array_equal(frames[0].get_stress(), reference[0].get_stress())
    with pytest.raises(DataError, match="exists"):
        convert(chain[0], chain[1], progress=False)


def test_cli(tmp_path, capsys):
    path = bad_file(tmp_path / "bad.xyz")
    assert main(["check", str(path), "--cutoff", "3", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "bad: " + f"{path}, frame 2: energy contains NaN" in out
    assert "5 frames: 3 bad, 1 outliers" in out

    assert main(["stats", str(SAMPLES), "--no-progress", "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "frames: 96, atoms: 3744, bad frames: 0" in out
    assert "labels: energy 96/96, forces 96/96, stress 32/96" in out

    cache = tmp_path / "c.lmdb"
    assert main(["preprocess", str(SAMPLES), str(cache), "--cutoff", "3", "--no-progress"]) == 0
    assert len(GraphLMDBDataset(cache)) == 96 and "96 graphs" in capsys.readouterr().out
    assert main(["check", str(cache), "--no-progress", "--min-distance", "0.1"]) == 0

    assert main(["convert", str(tmp_path / "missing.xyz"), str(tmp_path / "o.xyz")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"mlip data: error: {tmp_path / 'missing.xyz'}: no such file or directory"
    assert not any("Traceback" in line for line in err)
    assert main(["preprocess", str(path), str(cache), "--no-progress"]) == 1
    assert capsys.readouterr().err.strip().endswith("exists (remove it, or pass --overwrite)")


def water_frames(path, n=12):
    """``n`` water frames with energy and forces (3 atoms: 5 lines each in extxyz)."""
    frames = []
    for i in range(n):
        atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        atoms.rattle(0.01, seed=i)
        atoms.calc = SinglePointCalculator(atoms, energy=-14.0 - i, forces=np.full((3, 3), 0.1))
        frames.append(atoms)
    ase.io.write(path, frames)
    return path


def test_a_file_read_in_one_pass_is_sampled_by_seed_in_file_order(tmp_path):
    path = water_frames(tmp_path / "water.xyz")  # energies -14 .. -25 eV

    def energies(seed: int) -> list[float]:
        return [
            float(g.energy)
            for _, g in file_graphs([path], 3.0, max_frames=5, seed=seed, progress=False)
        ]

    assert len(energies(1)) == 5 and energies(1) == energies(1) != energies(2)
    assert energies(1) == sorted(energies(1), reverse=True)  # in file order
    assert len(list(file_graphs([path], 3.0, max_frames=50, progress=False))) == 12


@pytest.mark.parametrize(
    ("count", "problem"),
    [
        ("4", "the atom count on line 26 is 4, but only 3 atom lines follow (line 31 is '3')"),
        ("three", "line 26 should be the number of atoms, not 'three'"),
    ],
)
def test_check_names_a_frame_with_a_wrong_atom_count(tmp_path, capsys, count, problem):
    path = water_frames(tmp_path / "water.xyz")
    lines = path.read_text().splitlines(keepends=True)
    lines[25] = f"{count}\n"  # the count line of frame 5
    path.write_text("".join(lines))
    assert main(["check", str(path), "--cutoff", "3", "--no-progress"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"bad: {path}, frame 5: {problem}", "12 frames: 1 bad, 0 outliers"]
    found = list(records(path))
    assert [where for where, _ in found] == [f"{path}, frame {k}" for k in range(12)]
    assert isinstance(found[5][1], DataError)
    assert all(isinstance(atoms, Atoms) for k, (_, atoms) in enumerate(found) if k != 5)


def test_check_says_where_a_file_stops_being_readable(tmp_path, capsys):
    frames = read_frames(SI_XYZ, "0:5")
    ase.io.write(tmp_path / "si.traj", frames)
    data = (tmp_path / "si.traj").read_bytes()
    path = tmp_path / "cut.traj"
    path.write_bytes(data[: int(0.7 * len(data))])  # frames 3 and 4 cut off
    assert main(["check", str(path), "--cutoff", "3", "--no-progress"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"bad: {path}, frame 3: cannot parse: ")
    assert out[0].endswith("(frames 3.. not read)")
    assert out[1] == (
        "4 frames: 1 bad (1 file unreadable past a bad frame, whose later frames are not "
        "counted), 0 outliers"
    )


def test_check_refuses_a_file_of_blank_lines(tmp_path, capsys):
    path = tmp_path / "blank.xyz"
    path.write_text("\n  \n\t\n\n")
    assert main(["check", str(path), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert (
        captured.err.strip() == f"mlip data: error: {path}: contains no frames (only blank lines)"
    )
    assert "frames:" not in captured.out
    with pytest.raises(DataError, match="contains no frames"):
        list(records(path, index="0:3"))
