"""Streaming DataModule: index-only splits, statistics as the in-memory module's, bad frames raised
or skipped (before training and in the loaders), DDP shards, and training from LMDB end to end."""

from __future__ import annotations

import pickle
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler
from torch_geometric.data import Data

import mlip
from mlip.data.convert import convert, preprocess
from mlip.data.datamodule import SKIPPED, DataModule
from mlip.data.readers import LMDBDataset
from mlip.errors import DataError
from mlip.train.runner import compose, train

from .conftest import TINY_RUN

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "aselmdb_samples"
BPA = SAMPLES / "3bpa_train_300K_first64.aselmdb"
SI = SAMPLES / "zuo2020_Si_train_first32.aselmdb"
CUTOFF = 4.0


def streaming(**kwargs) -> DataModule:
    kwargs = {"train": SAMPLES, "cutoff": CUTOFF, "progress": False, "stream": True, **kwargs}
    dm = DataModule(**kwargs)
    dm.setup("fit")
    return dm


def frame_ids(dm: DataModule, name: str) -> set[int]:
    return set(dm.splits[name].indices.tolist())


def write_bad(path: Path, kinds: dict[int, str], count: int = 8, first: int = 0) -> Path:
    """``count`` 3BPA frames as an aselmdb file, frame ``i`` spoiled as ``kinds[i]`` says."""
    with LMDBDataset(BPA, CUTOFF) as sample:
        frames = [sample.frame(i) for i in range(first, first + count)]
    db = ase.db.connect(str(path), type="aselmdb", use_lock_file=False)
    for i, atoms in enumerate(frames):
        kind = kinds.get(i)
        if kind == "no_forces":
            atoms.calc.results.pop("forces")
        elif kind == "nan_energy":
            atoms.calc.results["energy"] = float("nan")
        elif kind == "overlap":
            atoms.positions[5] = atoms.calc.atoms.positions[5] = atoms.positions[0] + [0, 0.2, 0]
        elif kind in ("X", "Ge"):
            atoms.numbers[0] = atoms.calc.atoms.numbers[0] = 0 if kind == "X" else 32
        db.write(atoms, data={"charge": 0, "spin": 1})
    db.close()
    return path


def test_split_is_seeded_disjoint_and_reads_no_frame(monkeypatch):
    reads = []
    read = LMDBDataset.frame
    monkeypatch.setattr(LMDBDataset, "frame", lambda self, i: reads.append(i) or read(self, i))
    dm = streaming(val_fraction=0.2, test_fraction=0.1, split_seed=3, stats_max_frames=5)
    assert len(reads) == 5  # the statistics sample; splitting read nothing
    sets = [frame_ids(dm, name) for name in ("train", "val", "test")]
    assert [len(s) for s in sets] == [67, 19, 10]
    assert set.union(*sets) == set(range(96)) and sum(map(len, sets)) == 96
    again = streaming(val_fraction=0.2, test_fraction=0.1, split_seed=3, stats_max_frames=5)
    assert frame_ids(again, "val") == sets[1]
    other = streaming(val_fraction=0.2, test_fraction=0.1, split_seed=4, stats_max_frames=5)
    assert frame_ids(other, "val") != sets[1]
    assert dm.describe()["statistics_frames"] == 5 and dm.describe()["num_train_frames"] == 67


def test_holds_indices_not_frames():
    dm = streaming()
    seen: set[int] = set()

    def walk(value, depth=0):
        if id(value) in seen or depth > 4:
            return
        seen.add(id(value))
        assert not isinstance(value, Atoms | Data), f"holds a frame: {type(value)}"
        if isinstance(value, list | tuple | set):
            assert len(value) <= 20, f"holds a list of {len(value)}"
        items = value.values() if isinstance(value, dict) else value
        if isinstance(value, dict | list | tuple | set):
            for item in items:
                walk(item, depth + 1)
        elif hasattr(value, "__dict__") and type(value).__module__.startswith("mlip"):
            walk(vars(value), depth + 1)

    walk(vars(dm))
    for split in dm.splits.values():  # what a worker or a DDP rank receives
        assert len(pickle.dumps(split)) < 2000 + 4 * len(split)


@pytest.fixture(scope="module")
def as_xyz(tmp_path_factory) -> list[Path]:
    """The two sample files converted to extxyz (the in-memory module reads those)."""
    folder = tmp_path_factory.mktemp("xyz")
    paths = [folder / "bpa.xyz", folder / "si.xyz"]
    for source, target in zip((BPA, SI), paths, strict=True):
        convert(source, target, progress=False)
    return paths


def test_statistics_and_split_match_the_in_memory_module(as_xyz, tmp_path):
    isolated = tmp_path / "isolated.xyz"
    atom = Atoms("H", pbc=False)
    atom.calc = SinglePointCalculator(atom, energy=-13.6)
    ase.io.write(isolated, atom)
    for extra in ({}, {"isolated_atoms": isolated}):
        common = {"cutoff": CUTOFF, "val_fraction": 0.2, "test_fraction": 0.1, "split_seed": 3}
        common |= {"dtype": "float64", **extra}
        memory = DataModule(train=as_xyz, **common)
        memory.setup()
        stream = streaming(train=[BPA, SI], **common)
        expected, got = memory.statistics, stream.statistics
        assert got.species == expected.species == [1, 6, 7, 8, 14]
        assert got.e0_source == expected.e0_source
        np.testing.assert_allclose(got.e0, expected.e0, rtol=1e-6)
        assert got.avg_num_neighbors == pytest.approx(expected.avg_num_neighbors, rel=1e-12)
        assert got.scale == pytest.approx(expected.scale, rel=1e-10)
        for name in ("train", "val", "test"):
            energies = [float(g.energy) for g in memory.splits[name]]
            loaded = torch.cat([b.energy for b in getattr(stream, f"{name}_dataloader")()])
            assert sorted(loaded.tolist()) == sorted(energies), name
    assert got.e0[0] == -13.6 and got.e0_source == "mixed"


def test_graph_cache_gives_the_same_statistics(tmp_path):
    cache = tmp_path / "graphs.lmdb"
    preprocess([SAMPLES], cache, CUTOFF, progress=False)
    from_cache, from_rows = streaming(train=cache), streaming()
    assert from_cache.statistics == from_rows.statistics
    assert frame_ids(from_cache, "val") == frame_ids(from_rows, "val")
    batch = next(iter(from_cache.train_dataloader()))
    assert batch.pos.dtype == torch.float32 and batch.num_graphs == 4
    with pytest.raises(DataError, match="graph cache built with cutoff 4.0 Å, this run uses 5.0"):
        streaming(train=cache, cutoff=5.0)


def test_bad_frames_raise_naming_file_and_frame_or_are_skipped_and_counted(tmp_path):
    path = write_bad(
        tmp_path / "bad.aselmdb", {2: "no_forces", 3: "overlap", 4: "nan_energy", 6: "X"}
    )
    plain = {"train": path, "val_fraction": 0.0, "test_fraction": 0.0}
    with pytest.raises(DataError, match=r"bad\.aselmdb, frame 2: forces missing"):
        streaming(**plain)
    dm = streaming(**plain, on_error="skip")
    described = dm.describe()
    assert described["num_bad_frames"] == 4 and described["num_train_frames"] == 4
    assert described["bad_frames"] == [
        f"{path}, frame 2: forces missing (looked for 'forces')",
        f"{path}, frame 3: atoms 0 (C) and 5 (O) are 0.200 Å apart, closer than the minimum "
        "distance 0.5 Å (data.min_distance)",
        f"{path}, frame 4: energy contains NaN or inf",
        f"{path}, frame 6: unknown element(s) X",
    ]
    assert frame_ids(dm, "train") == {0, 1, 5, 7}
    assert sum(b.num_graphs for b in dm.train_dataloader()) == 4


def test_loaders_check_frames_outside_the_statistics_sample(tmp_path):
    val = write_bad(tmp_path / "val.aselmdb", {1: "no_forces", 2: "Ge"}, count=4, first=40)
    options = {"train": BPA, "val": val, "test_fraction": 0.0, "stats_max_frames": 8}
    with pytest.raises(DataError, match=r"val\.aselmdb, frame 1: forces missing"):
        list(streaming(**options, num_workers=1).val_dataloader())  # raised in a worker
    dm = streaming(**options, on_error="skip", eval_batch_size=2)
    assert dm.describe()["num_bad_frames"] == 0  # not read before training
    for _ in range(2):  # two epochs meet the same bad frames: counted once
        batches = [dm.on_before_batch_transfer(b, 0) for b in dm.val_dataloader()]
        assert [b.num_graphs for b in batches] == [1, 1] and all(SKIPPED not in b for b in batches)
    described = dm.describe()
    assert described["num_bad_frames"] == described["num_bad_frames_loaded"] == 2
    assert described["bad_frames"][1] == (
        f"{val}, frame 2: element(s) Ge not among the species (H, C, N, O)"
    )
    all_bad = streaming(**options, on_error="skip", eval_batch_size=1)
    with pytest.raises(DataError, match="all 1 frames of a batch are bad"):
        list(all_bad.val_dataloader())
    checked = streaming(**{**options, "stats_max_frames": None}, on_error="skip")
    assert checked.describe()["num_bad_frames"] == 2 and len(checked.splits["val"]) == 2


def test_each_ddp_rank_reads_a_disjoint_shard():
    dm = streaming(batch_size=4, dtype="float64")
    loader = dm.train_dataloader()
    # default samplers: Lightning swaps in a DistributedSampler (use_distributed_sampler)
    assert isinstance(loader.sampler, RandomSampler)
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)
    split = dm.splits["train"]
    shards, energies = [], []
    for rank in (0, 1):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, seed=0)
        sharded = _update_dataloader(loader, sampler)  # what Lightning does under DDP
        shards.append(set(split.indices[list(sampler)].tolist()))
        energies.append(torch.cat([b.energy for b in sharded]))
        assert len(energies[-1]) == len(split) // 2
    assert not shards[0] & shards[1] and shards[0] | shards[1] == frame_ids(dm, "train")
    expected = {float(split.source[i].energy) for i in shards[0]}
    assert set(energies[0].tolist()) == expected


def tiny(run_dir: Path, *extra: str) -> list[str]:
    return [
        f"run_dir={run_dir}",
        "data=lmdb",
        "data.progress=false",
        "data.batch_size=4",
        *TINY_RUN,
        *extra,
    ]


def test_train_from_the_bundled_sample_with_data_lmdb(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's default path is relative, as the other data configs
    cfg = compose(tiny(tmp_path / "run", "data.val_fraction=0.5", "data.test_fraction=0.25"))
    assert cfg.data.cutoff == 3.0
    result = train(cfg)
    assert isinstance(result.datamodule, DataModule) and result.datamodule.stream
    assert result.trainer.global_step == 4  # 16 training frames, batch 4
    assert result.metrics["test"]["energy_mae_meV_per_atom"] > 0
    potential = mlip.load_model(result.model_path)
    assert potential.species.tolist() == [1, 6, 7, 8]


def test_training_skips_bad_frames_and_records_them(tmp_path):
    path = write_bad(
        tmp_path / "bad.aselmdb", {2: "no_forces", 3: "overlap", 4: "nan_energy", 6: "X"}
    )
    overrides = tiny(
        tmp_path / "run", f"data.train={path}", "data.val_fraction=0", "data.test_fraction=0"
    )
    with pytest.raises(DataError, match=r"bad\.aselmdb, frame 2: forces missing"):
        train(compose(overrides))
    result = train(compose([*overrides, "data.on_error=skip", "resume=false"]))
    assert result.trainer.global_step == 1  # the 4 good frames, batch 4
    metadata = torch.load(result.model_path, weights_only=True)["metadata"]
    assert metadata["data"]["num_bad_frames"] == 4
    assert "frame 3: atoms 0 (C) and 5 (O) are 0.200 Å apart" in metadata["data"]["bad_frames"][1]
    assert "frame 6: unknown element(s) X" in metadata["data"]["bad_frames"][3]


def test_streaming_refuses_a_file_it_cannot_index():
    with pytest.raises(
        DataError, match=r"Si_train\.xyz: streamed data \(stream: true\) is \.aselmdb"
    ):
        streaming(train=ROOT / "data" / "zuo2020" / "Si_train.xyz")
