"""Replay: the mixed sampler's draws, replay sets (checks, weights, split), pseudo-labels (the base
model's own, reused, relabelled on change), loaders in memory and streamed, and a training run that
logs the new data's and the replay set's validation errors apart."""

from __future__ import annotations

import csv
import functools
import math
from collections import Counter
from pathlib import Path

import ase.io
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.loggers import CSVLogger
from torch_geometric.data import Batch

import mlip
from mlip import keys
from mlip.data.datamodule import DataModule
from mlip.errors import DataError
from mlip.nn.config import default_dtype
from mlip.train.loss import WeightedLoss
from mlip.train.metrics import ErrorSums
from mlip.train.mixing import MixedSampler, add_replay
from mlip.train.module import PotentialModule
from mlip.train.replay import pseudo_label, replay_set

from .conftest import make_model

ROOT = Path(__file__).resolve().parent.parent
SI_LMDB = ROOT / "data/aselmdb_samples/zuo2020_Si_train_first32.aselmdb"
SI = ROOT / "data/zuo2020/Si_train.xyz"
CUTOFF = 3.0
CU = 29


def cu_frames(count: int, seed: int = 0) -> list[Atoms]:
    """``count`` 4-atom fcc Cu cells, scaled and rattled, with EMT energy, forces and stress."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        atoms = bulk("Cu", cubic=True)
        atoms.set_cell(atoms.cell.array * (1 + 0.02 * rng.normal()), scale_atoms=True)
        atoms.rattle(0.05, seed=1000 * seed + i)
        atoms.calc = EMT()
        labels = {name: atoms.calc.get_property(name, atoms) for name in keys.LABELS}
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    return frames


def write(path: Path, frames: list[Atoms]) -> Path:
    ase.io.write(path, frames, format="extxyz")
    return path


def cu_potential(e0: float = -3.0) -> mlip.Potential:
    """A tiny float64 Facet for Cu."""
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model = make_model("facet", num_species=1, r_max=CUTOFF)
        return mlip.Potential(model, CUTOFF, [CU], e0=[e0])


# -- the sampler ------------------------------------------------------------------------------------


def test_sampler_serves_every_new_frame_once_and_k_replay_frames_per_epoch():
    sampler = MixedSampler(10, 7, ratio=0.3, seed=1)
    assert len(sampler) == 13  # k = round(0.3 * 10) = 3
    for epoch in range(4):
        sampler.set_epoch(epoch)
        served = list(sampler)
        assert len(served) == len(sampler)
        assert sorted(i for i in served if i < 10) == list(range(10))
        replay = [i for i in served if i >= 10]
        assert len(replay) == 3 and all(10 <= i < 17 for i in replay)
    assert len(MixedSampler(10, 7, ratio=0.01)) == 11  # at least one replay frame


def test_sampler_draw_depends_on_seed_and_epoch_only():
    def draw(sampler: MixedSampler, epoch: int) -> list[int]:
        sampler.set_epoch(epoch)
        return list(sampler)

    a, b = MixedSampler(20, 50, 0.25, seed=3), MixedSampler(20, 50, 0.25, seed=3)
    for epoch in range(3):
        draw(a, epoch)
    assert draw(a, 5) == draw(b, 5)  # a resumed run sees the frames of the uninterrupted one
    assert draw(a, 5) == draw(a, 5)
    replay = [{i for i in draw(a, e) if i >= 20} for e in range(4)]
    assert all(replay[e] != replay[e + 1] for e in range(3))
    assert draw(MixedSampler(20, 50, 0.25, seed=4), 5) != draw(a, 5)
    # without set_epoch (a plain PyTorch loop) each pass is the next epoch
    plain = MixedSampler(20, 50, 0.25, seed=3)
    assert [list(plain) for _ in range(3)] == [draw(b, e) for e in range(3)]
    # without shuffle: new frames in order, replay frames spread among them
    ordered = MixedSampler(8, 50, 0.25, seed=3, shuffle=False)
    served = list(ordered)
    assert [i for i in served if i < 8] == list(range(8))
    assert [k for k, i in enumerate(served) if i >= 8] == [2, 7]


def test_sampler_sees_every_replay_frame_and_wraps_around():
    sampler = MixedSampler(10, 7, ratio=0.3, seed=0)  # 3 per epoch
    seen: set[int] = set()
    for epoch in range(3):  # 9 draws: the 7 frames, then 2 again
        sampler.set_epoch(epoch)
        seen |= {i - 10 for i in sampler if i >= 10}
    assert seen == set(range(7))
    counts = Counter()
    for epoch in range(5, 12):  # any 7 epochs: 21 draws, 3 of each frame
        sampler.set_epoch(epoch)
        counts.update(i for i in sampler if i >= 10)
    assert set(counts.values()) == {3}
    small = MixedSampler(10, 3, ratio=0.5, seed=0)  # k = 5 > 3 replay frames
    for epoch in range(3):
        small.set_epoch(epoch)
        counts = Counter(i for i in small if i >= 10)
        assert sum(counts.values()) == 5 and set(counts) == {10, 11, 12}
        assert max(counts.values()) - min(counts.values()) <= 1


def test_sampler_under_lightnings_ddp_wrapper_gets_the_epoch_and_shards_it():
    sampler = MixedSampler(9, 6, ratio=0.5, seed=2)  # 9 + 4 = 13 indices, odd: one padded
    for epoch in (0, 3):
        shards = []
        for rank in (0, 1):
            wrapper = DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=True)
            wrapper.set_epoch(epoch)  # what Lightning's fit loop calls every epoch
            assert sampler.epoch == epoch
            shards.append(list(wrapper))
        expected = Counter(MixedSampler(9, 6, ratio=0.5, seed=2).indices(epoch).tolist())
        assert len(shards[0]) == len(shards[1]) == 7
        union = Counter(shards[0]) + Counter(shards[1])
        assert not expected - union and (union - expected).total() == 1  # one index padded


@pytest.mark.parametrize("ratio", [0.0, -1.0, math.nan, math.inf])
def test_sampler_refuses_a_ratio_that_is_not_positive_and_finite(ratio):
    with pytest.raises(ValueError, match="ratio"):
        MixedSampler(10, 5, ratio)


# -- replay sets ------------------------------------------------------------------------------------


def test_replay_set_scales_loss_weights_and_splits_seeded(tmp_path):
    frames = cu_frames(10)
    frames[4].info["weight"] = 2.0
    path = write(tmp_path / "replay.xyz", frames)
    replay = replay_set(path, CUTOFF, [CU], weight=0.5, val_fraction=0.2, progress=False)
    assert (len(replay.train), len(replay.val)) == (8, 2)
    assert replay.files == [str(path)] and replay.weight == 0.5
    weights = {}
    for part in (replay.train, replay.val):
        for i in range(len(part)):
            frame = int(part.describe(i).rsplit("frame ", 1)[1])
            weights[frame] = float(part[i][keys.WEIGHT])
    assert weights == {k: 1.0 if k == 4 else 0.5 for k in range(10)}
    val = {replay.val.describe(i) for i in range(2)}
    again = replay_set(path, CUTOFF, [CU], 0.5, 0.2, progress=False)
    assert {again.val.describe(i) for i in range(2)} == val
    other = replay_set(path, CUTOFF, [CU], 0.5, 0.2, seed=1, progress=False)
    assert {other.val.describe(i) for i in range(2)} != val
    two = replay_set(write(tmp_path / "two.xyz", frames[:2]), CUTOFF, [CU], 1.0, 0.01)
    assert (len(two.train), len(two.val)) == (1, 1)
    one = replay_set(write(tmp_path / "one.xyz", frames[:1]), CUTOFF, [CU], 1.0, 0.5)
    assert (len(one.train), len(one.val)) == (1, 0)


def test_replay_set_refuses_an_element_outside_species_naming_file_and_frame(tmp_path):
    frames = cu_frames(5)
    frames[3].numbers[1] = 79  # Au
    path = write(tmp_path / "replay.xyz", frames)
    with pytest.raises(DataError, match=r"replay\.xyz, frame 3: .*Au.* not among the species \(Cu"):
        replay_set(path, CUTOFF, [CU], progress=False)
    frames[3].numbers[1] = CU
    frames[2].calc.results["forces"][0, 0] = math.nan
    write(path, frames)
    with pytest.raises(DataError, match=r"replay\.xyz, frame 2"):
        replay_set(path, CUTOFF, [CU], progress=False)
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(DataError, match="empty"):
        replay_set(tmp_path / "empty.xyz", CUTOFF, [CU], progress=False)
    for weight in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="weight"):
            replay_set(path, CUTOFF, [CU], weight=weight, progress=False)


def test_replay_weight_scales_the_loss_of_replay_frames_linearly(tmp_path):
    new_path = write(tmp_path / "new.xyz", cu_frames(1, seed=1))
    new = replay_set(new_path, CUTOFF, [CU], 1.0, 0.0, dtype="float64", progress=False)
    path = write(tmp_path / "replay.xyz", cu_frames(1))
    loss = WeightedLoss(energy_weight=1.0, forces_weight=1.0, stress_weight=0.0)
    d = 0.1  # eV/atom, the energy residual of the replay frame only

    def batch_loss(weight: float, with_new: bool) -> tuple[float, dict]:
        replay = replay_set(path, CUTOFF, [CU], weight, 0.0, dtype="float64").train[0]
        graphs = [new.train[0], replay] if with_new else [replay]
        batch = Batch.from_data_list(graphs)
        offset = torch.zeros(len(graphs), dtype=batch[keys.ENERGY].dtype)
        offset[-1] = d * replay.num_nodes
        pred = {keys.ENERGY: batch[keys.ENERGY] + offset, keys.FORCES: batch[keys.FORCES]}
        return float(loss(pred, batch)), loss.terms(pred, batch)

    for weight in (1.0, 3.0, 10.0):  # the loss is linear in the weight, whatever the batch holds
        mixed, _ = batch_loss(weight, with_new=True)
        assert mixed == pytest.approx(weight * d**2 / 2)
        alone, terms = batch_loss(weight, with_new=False)
        value, count = terms[keys.ENERGY]
        assert float(value) == pytest.approx(weight * d**2) and float(count) == 1
        assert alone == pytest.approx(weight * d**2)


# -- pseudo-labels ----------------------------------------------------------------------------------


def structures(path: Path, count: int = 1) -> Path:
    """Unlabelled structures: ``count`` periodic Cu cells and one Cu4 cluster."""
    frames = [f.copy() for f in cu_frames(count)]  # copies carry no calculator
    cluster = Atoms("Cu4", [[0, 0, 0], [2.5, 0, 0], [1.25, 2.2, 0], [1.25, 0.7, 2.0]])
    return write(path, [*frames, cluster])


def test_pseudo_label_writes_the_potentials_own_labels(tmp_path):
    potential = cu_potential()
    source = structures(tmp_path / "domain.xyz")
    out = pseudo_label(potential, source, tmp_path / "pseudo.xyz", copies=2, progress=False)
    assert potential.training  # the potential's mode is left as it was
    frames = ase.io.read(out, ":")
    originals = ase.io.read(source, ":")
    assert len(frames) == 6 and {f.info["config_type"] for f in frames} == {"pseudo"}
    calculator = mlip.MLIPCalculator(potential)
    for k, frame in enumerate(frames):
        original = originals[k // 3]
        periodic = bool(frame.pbc.all())
        results = frame.calc.results
        assert np.isfinite(results["energy"]) and np.isfinite(results["forces"]).all()
        assert ("stress" in results) == periodic
        if k % 3 == 0:
            np.testing.assert_allclose(frame.positions, original.positions, atol=1e-6)
        else:
            moved = np.abs(frame.positions - original.positions).max()
            assert 1e-3 < moved < 0.5
            if periodic:
                strain = np.linalg.solve(original.cell.array, frame.cell.array) - np.eye(3)
                assert 0 < np.abs(strain).max() <= 0.02 + 1e-9
            else:
                assert np.array_equal(frame.cell.array, original.cell.array)
        expected = frame.copy()
        expected.calc = calculator
        assert results["energy"] == pytest.approx(expected.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(results["forces"], expected.get_forces(), atol=1e-6)
        if periodic:
            np.testing.assert_allclose(results["stress"], expected.get_stress(), atol=1e-6)
    replay = replay_set(out, CUTOFF, [CU], progress=False)  # a replay file as any other
    assert len(replay.train) + len(replay.val) == 6


def test_pseudo_label_reuses_its_file_and_relabels_on_any_change(tmp_path):
    potential = cu_potential()
    source = structures(tmp_path / "domain.xyz")
    out = tmp_path / "pseudo.xyz"

    def label(**settings) -> tuple[int, int]:
        pseudo_label(settings.pop("potential", potential), source, out, progress=False, **settings)
        stat = out.stat()
        return stat.st_ino, stat.st_mtime_ns

    first = label(copies=1)
    assert label(copies=1) == first  # reused: not rewritten
    assert (tmp_path / "pseudo.xyz.json").is_file()
    changed = [label(copies=2), label(copies=2, rattle=0.01), label(copies=2, rattle=0.01, seed=1)]
    structures(source, count=2)
    changed.append(label(copies=2, rattle=0.01, seed=1))
    assert len(ase.io.read(out, ":")) == 9
    changed.append(label(copies=2, rattle=0.01, seed=1, potential=cu_potential(e0=-2.0)))
    assert len({first, *changed}) == len(changed) + 1  # each change relabelled
    again = pseudo_label(
        cu_potential(e0=-2.0), source, tmp_path / "again.xyz", 2, 0.01, seed=1, progress=False
    )
    assert again.read_bytes() == out.read_bytes()  # seeded: the same inputs, the same file
    out.write_text(out.read_text().replace("pseudo", "edited"))
    assert label(copies=2, rattle=0.01, seed=1, potential=cu_potential(e0=-2.0)) != changed[-1]


def test_pseudo_label_refuses_non_finite_labels_naming_the_frame(tmp_path):
    source = structures(tmp_path / "domain.xyz")
    out = tmp_path / "pseudo.xyz"
    with pytest.raises(DataError, match=r"domain\.xyz, frame 0: cannot pseudo-label.*not finite"):
        pseudo_label(cu_potential(e0=math.nan), source, out, copies=1, progress=False)
    assert not out.exists()


# -- loaders and training ---------------------------------------------------------------------------


def test_streamed_data_with_replay_serves_k_weighted_replay_frames_per_epoch(tmp_path):
    dm = DataModule(
        SI_LMDB, CUTOFF, stream=True, val_fraction=0.2, test_fraction=0.0, batch_size=4,
        stats_max_frames=4, dtype="float64", progress=False,
    )  # fmt: skip
    dm.setup("fit")
    path = write(tmp_path / "replay.xyz", ase.io.read(SI, "57:63"))
    replay = replay_set(path, CUTOFF, [14], weight=0.25, val_fraction=0.34, dtype="float64")
    sampler = add_replay(dm, replay, ratio=0.2, seed=5)
    num_new, k = len(dm.splits["train"]), max(1, round(0.2 * len(dm.splits["train"])))
    loader = dm.train_dataloader()
    assert loader.sampler is sampler and len(loader.sampler) == num_new + k
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        weights = torch.cat([batch[keys.WEIGHT] for batch in loader])
        assert len(weights) == num_new + k and int((weights == 0.25).sum()) == k
    val = dm.val_dataloader()
    assert [len(loader.dataset) for loader in val] == [len(dm.splits["val"]), 2]
    described = dm.describe()
    assert described["num_replay_train_frames"] == 4 and described["num_replay_val_frames"] == 2
    assert described["replay_files"] == [str(path)]
    assert (described["replay_ratio"], described["replay_weight"]) == (0.2, 0.25)


def errors(module: PotentialModule, frames) -> dict[str, float]:
    """The validation metrics of ``frames`` (a dataset of graphs) under ``module``'s potential."""
    batch = Batch.from_data_list([frames[i] for i in range(len(frames))])
    sums = ErrorSums()
    sums.update(module._predict(module.eval_potential, batch, False), batch, module.loss_fn)
    return sums.compute(module.loss_fn)


def metric_rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("new_val_fraction", [0.25, 0.0])
def test_training_with_replay_logs_val_and_val_replay_metrics(tmp_path, new_val_fraction):
    new = write(tmp_path / "new.xyz", cu_frames(8, seed=1))
    dm = DataModule(
        new, CUTOFF, val_fraction=new_val_fraction, test_fraction=0.0, species=[CU],
        batch_size=2, dtype="float64", progress=False,
    )  # fmt: skip
    dm.setup("fit")
    replay = replay_set(write(tmp_path / "replay.xyz", cu_frames(6)), CUTOFF, [CU], 2.0, 0.34)
    sampler = add_replay(dm, replay, ratio=0.5, seed=0)
    epochs = []
    set_epoch = sampler.set_epoch
    sampler.set_epoch = lambda epoch: epochs.append(epoch) or set_epoch(epoch)
    stats = dm.statistics
    with default_dtype(torch.float64):
        model = make_model("facet", num_species=1, r_max=CUTOFF)
        potential = mlip.Potential(model, CUTOFF, stats.species, e0=stats.e0, scale=stats.scale)
    module = PotentialModule(
        potential, WeightedLoss(), functools.partial(torch.optim.Adam, lr=1e-3), ema_decay=None
    )
    logger = CSVLogger(tmp_path, name="logs")
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)

    assert epochs == [0, 1]
    num_new = len(dm.splits["train"])
    assert trainer.global_step == 2 * math.ceil((num_new + round(0.5 * num_new)) / 2)
    rows = metric_rows(logger)
    columns = set(rows[0])
    assert not any("dataloader_idx" in c for c in columns)
    replay_rows = [r for r in rows if r.get("val_replay/loss")]
    assert [r["epoch"] for r in replay_rows] == ["0", "1"]
    assert {"val_replay/energy_rmse_meV_per_atom", "val_replay/forces_mae_meV_per_A"} <= columns
    assert set(module.last_metrics["val_replay"]) == {
        c.removeprefix("val_replay/") for c in columns if c.startswith("val_replay/")
    }
    # each prefix holds the errors of its own frames (the final weights validated last)
    assert errors(module, replay.val) == pytest.approx(module.last_metrics["val_replay"])
    if new_val_fraction:
        new_rows = [r for r in rows if r.get("val/loss")]
        assert [r["epoch"] for r in new_rows] == ["0", "1"]
        assert errors(module, dm.splits["val"]) == pytest.approx(module.last_metrics["val"])
    else:  # no new validation frames: loader 0 is empty, and only the replay set is reported
        assert not any(c.startswith("val/") for c in columns) and "val" not in module.last_metrics
