"""Lazy LMDB datasets: ASE-LMDB frames and the graph cache, against graphs built from the readers."""

import pickle
import shutil
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

import mlip.data.lmdb as lmdb_module
from mlip.data.convert import preprocess
from mlip.data.graph import atoms_to_graph
from mlip.data.lmdb import GraphLMDBDataset
from mlip.data.readers import LMDBDataset, read_frames
from mlip.errors import DataError

SAMPLES = Path(__file__).parent.parent / "data" / "aselmdb_samples"
CUTOFF = 4.0
OPEN = lmdb_module.lmdb.open


@pytest.fixture
def samples(tmp_path):
    """A private copy of the two sample files (96 frames: 64 3BPA molecules, then 32 Si cells)."""
    folder = tmp_path / "samples"
    folder.mkdir()
    for file in SAMPLES.glob("*.aselmdb"):
        shutil.copy(file, folder)
    return folder


def assert_same_graph(graph, reference):
    assert graph.num_nodes == reference.num_nodes
    assert set(graph.keys()) == set(reference.keys())
    for key in reference.keys():
        if torch.is_tensor(reference[key]):
            assert graph[key].dtype == reference[key].dtype, key
            torch.testing.assert_close(graph[key], reference[key], rtol=0, atol=0, msg=key)


def test_items_equal_reader_graphs(samples):
    reference = read_frames(samples)
    with LMDBDataset(samples, CUTOFF, dtype=torch.float64) as dataset:
        assert len(dataset) == 96
        for index in (0, 63, 64, 95, -1):
            expected = atoms_to_graph(reference[index], CUTOFF, torch.float64, labels=True)
            assert_same_graph(dataset[index], expected)
        assert float(dataset[0].charge) == 0.0 and float(dataset[0].spin) == 1.0
        assert bool(dataset[70].has_stress) and not bool(dataset[3].has_stress)
        assert dataset.describe(70).endswith("zuo2020_Si_train_first32.aselmdb, frame 6")
        with pytest.raises(IndexError):
            dataset[96]
    # the index is a row-id range per file, not frames: pickles (spawn, DDP) stay tiny
    assert all(isinstance(ids, range) for ids in dataset._ids)
    assert len(pickle.dumps(dataset)) < 2000
    assert len(read_frames(samples, "0:2")) == 2  # closed: the readers can open the files again


def test_dataloader_workers_after_parent_read(samples):
    dataset = LMDBDataset(samples, CUTOFF, dtype=torch.float64)
    expected = torch.cat([dataset[i].energy for i in range(len(dataset))])  # parent has it open
    other = LMDBDataset(samples / "3bpa_train_300K_first64.aselmdb", CUTOFF, dtype=torch.float64)
    assert len(other) == 64 and float(other[5].energy) == float(expected[5])
    loader = DataLoader(dataset, batch_size=16, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert sum(b.num_graphs for b in batches) == 96
    torch.testing.assert_close(torch.cat([b.energy for b in batches]), expected, rtol=0, atol=0)
    dataset.close()


def test_deleted_rows_and_bad_rows(tmp_path):
    path = tmp_path / "edited.aselmdb"
    frames = read_frames(SAMPLES / "zuo2020_Si_train_first32.aselmdb", "0:4")
    db = ase.db.connect(str(path), type="aselmdb", use_lock_file=False)
    for atoms in frames:
        db.write(atoms)
    db.delete([2])
    db.close()
    with LMDBDataset(path, CUTOFF, dtype=torch.float64) as dataset:
        assert len(dataset) == 3
        energies = [float(dataset[i].energy) for i in range(3)]
    assert energies == [frames[i].get_potential_energy() for i in (0, 2, 3)]
    assert energies == [a.get_potential_energy() for a in read_frames(path)]
    with LMDBDataset(path, CUTOFF, required=("stress", "charge")) as dataset:
        with pytest.raises(DataError, match=r"edited\.aselmdb, frame 1: charge missing"):
            dataset[1]


def test_graph_cache_equals_built_graphs(samples, tmp_path):
    cache = tmp_path / "graphs.lmdb"
    written, bad = preprocess([samples], cache, CUTOFF, progress=False)
    assert (written, bad.count) == (96, 0)
    reference = read_frames(samples)
    with GraphLMDBDataset(cache) as dataset:
        assert len(dataset) == 96 and dataset.cutoff == CUTOFF
        assert dataset.metadata["dtype"] == "float64" and dataset.metadata["num_bad"] == 0
        for index in (0, 40, 64, 95):
            expected = atoms_to_graph(reference[index], CUTOFF, torch.float64, labels=True)
            assert_same_graph(dataset[index], expected)
        assert dataset.describe(64).endswith("zuo2020_Si_train_first32.aselmdb, frame 0)")
        batch = next(iter(DataLoader(dataset, batch_size=8)))
        assert batch.num_graphs == 8 and batch.edge_index.dtype == torch.long
    with GraphLMDBDataset(cache, dtype=torch.float32) as dataset:
        assert dataset[0].pos.dtype == torch.float32 and dataset[0].z.dtype == torch.long
    with pytest.raises(DataError, match="not an mlip graph cache"):
        GraphLMDBDataset(samples / "3bpa_train_300K_first64.aselmdb")


def test_interrupted_cache_leaves_nothing(samples, tmp_path):
    cache, source = tmp_path / "graphs.lmdb", tmp_path / "bad.xyz"
    frames = read_frames(samples, "0:2")
    frames[1].calc.results["energy"] = float("nan")
    ase.io.write(source, frames)
    with pytest.raises(DataError, match=r"bad\.xyz, frame 1: energy contains NaN"):
        preprocess([source], cache, CUTOFF, progress=False)
    assert not cache.exists() and list(tmp_path.glob("graphs*")) == []
    with pytest.raises(DataError, match="no such file"):
        GraphLMDBDataset(cache)


def test_index_memory_is_per_file_not_per_frame(samples):
    np.testing.assert_array_equal(LMDBDataset(samples, CUTOFF)._starts, [0, 64, 96])


def test_remapping_keeps_reads_right(samples, monkeypatch):
    with LMDBDataset(samples, CUTOFF, dtype=torch.float64) as dataset:
        expected = [float(dataset[i].energy) for i in range(96)]
    monkeypatch.setattr(lmdb_module, "REMAP_BYTES", 200_000)  # reopen every few reads
    opened = []
    monkeypatch.setattr(lmdb_module.lmdb, "open", lambda *a, **k: opened.append(1) or OPEN(*a, **k))
    with LMDBDataset(samples, CUTOFF, dtype=torch.float64) as dataset:
        assert [float(dataset[i].energy) for i in range(96)] == expected
    assert len(opened) > 10
