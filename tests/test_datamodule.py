"""DataModule: seeded splits, separate files, isolated atoms, batching, and bad input stopping early."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from mlip.data.datamodule import DataModule
from mlip.data.records import LabelKeys
from mlip.data.stats import is_isolated
from mlip.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
SI = ROOT / "data/zuo2020/Si_train.xyz"
GAP = ROOT / "data/si_gap18_tiny/Si_tiny.xyz"
SMALL = "57:77"  # 20 small Si frames (12-96 atoms)


def module(**kwargs) -> DataModule:
    kwargs = {"train": SI, "cutoff": 3.0, "index": SMALL, "progress": False, **kwargs}
    dm = DataModule(**kwargs)
    dm.setup("fit")
    return dm


def positions(split) -> set[bytes]:
    return {graph.pos.numpy().tobytes() for graph in split}


def test_seeded_fraction_split_is_disjoint_complete_and_reproducible():
    dm = module(val_fraction=0.2, test_fraction=0.1, split_seed=3)
    sizes = {name: len(split) for name, split in dm.splits.items()}
    assert sizes == {"train": 14, "val": 4, "test": 2}
    sets = [positions(dm.splits[name]) for name in ("train", "val", "test")]
    assert sum(len(s) for s in sets) == 20 and len(set.union(*sets)) == 20
    again = module(val_fraction=0.2, test_fraction=0.1, split_seed=3)
    assert positions(again.splits["val"]) == sets[1]
    other = module(val_fraction=0.2, test_fraction=0.1, split_seed=4)
    assert positions(other.splits["val"]) != sets[1]
    assert dm.describe()["num_train_frames"] == 14


def test_separate_files_are_used_as_given(tmp_path):
    frames = ase.io.read(SI, SMALL)
    ase.io.write(tmp_path / "val.xyz", frames[:3])
    ase.io.write(tmp_path / "test.xyz", frames[3:5])
    dm = module(
        index=":", train=tmp_path / "val.xyz", val=tmp_path / "val.xyz", test=tmp_path / "test.xyz"
    )
    assert [len(dm.splits[n]) for n in ("train", "val", "test")] == [3, 3, 2]


def test_isolated_atoms_give_e0_and_are_not_trained_on():
    keys = LabelKeys(energy="dft_energy", forces="dft_force", virial="dft_virial")
    dm = module(
        train=GAP, index=":", label_keys=keys, cutoff=5.0, val_fraction=0.1, test_fraction=0.0
    )
    assert dm.statistics.num_isolated == 1
    assert not any(is_isolated(graph) for graph in dm.splits["train"])
    assert sum(len(s) for s in dm.splits.values()) == 52
    assert dm.statistics.e0 == [pytest.approx(-158.54496821)]
    assert dm.statistics.e0_source == "isolated"


def test_batches_carry_labels_masks_and_dtype():
    dm = module(batch_size=3, dtype="float64", shuffle=False)
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 3
    assert batch.pos.dtype == torch.float64 and batch.stress.shape == (3, 3, 3)
    assert batch.has_energy.all() and batch.has_forces.all() and batch.has_stress.all()
    assert dm.statistics.avg_num_neighbors > 0 and dm.statistics.scale > 0


def write_bad(tmp_path: Path, kind: str) -> Path:
    frames = ase.io.read(SI, "57:61")
    path = tmp_path / f"{kind}.xyz"
    if kind == "nan_forces":
        forces = frames[2].get_forces()
        forces[1, 0] = np.nan
        frames[2].calc.results["forces"] = forces
    if kind == "missing_label":
        frames[2].calc.results.pop("energy")
    if kind == "overlap":
        frames[2].positions[7] = frames[2].positions[3] + [0.05, 0.0, 0.0]
    ase.io.write(path, frames)
    if kind == "malformed":
        lines = path.read_text().splitlines()
        start = sum(int(lines[0]) + 2 for _ in range(1))  # frame 1 starts here
        start += int(lines[start]) + 2  # frame 2
        lines[start + 3] = "Si 0.0 zero 1.0 0 0 0"
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan_forces", "frame 2: forces contains NaN"),
        ("missing_label", "frame 2: energy missing"),
        ("malformed", "frame 2"),
        (
            "overlap",
            r"frame 2: atoms 3 \(Si\) and 7 \(Si\) are 0\.050 Å apart, closer than "
            r"the minimum distance 0\.5 Å \(data\.min_distance\)",
        ),
    ],
)
def test_bad_input_names_file_and_frame(tmp_path, kind, message):
    path = write_bad(tmp_path, kind)
    with pytest.raises(DataError, match=message) as info:
        module(train=path, index=":")
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("kind", "kept", "message"),
    [
        ("nan_forces", 3, "frame 2: forces contains NaN or inf"),
        ("missing_label", 3, "frame 2: energy missing (looked for 'energy')"),
        ("malformed", 3, "frame 2: cannot parse"),  # reading goes on after the bad frame
        ("overlap", 3, "frame 2: atoms 3 (Si) and 7 (Si) are 0.050 Å apart"),
    ],
)
def test_bad_frames_can_be_skipped_and_counted(tmp_path, kind, kept, message):
    path = write_bad(tmp_path, kind)
    dm = module(train=path, index=":", on_error="skip", val_fraction=0.0, test_fraction=0.0)
    assert len(dm.splits["train"]) == kept
    described = dm.describe()
    assert described["num_bad_frames"] == 1 and described["on_error"] == "skip"
    assert described["bad_frames"][0].startswith(f"{path}, {message}")


def test_forces_above_max_force_are_absurd_labels(tmp_path):
    """data.max_force: a frame whose largest force component exceeds it is bad, named with its
    force; without it the frame trains."""
    frames = ase.io.read(SI, "57:61")
    forces = frames[2].get_forces()
    forces[4, 1] = -75.0
    frames[2].calc.results["forces"] = forces
    path = tmp_path / "absurd.xyz"
    ase.io.write(path, frames)
    assert (
        len(module(train=path, index=":", val_fraction=0.0, test_fraction=0.0).splits["train"]) == 4
    )
    with pytest.raises(DataError, match=r"frame 2: a force of 75 eV/Å, above data.max_force=50"):
        module(train=path, index=":", max_force=50.0)
    dm = module(train=path, index=":", max_force=50.0, on_error="skip", val_fraction=0.0,
                test_fraction=0.0)  # fmt: skip
    assert len(dm.splits["train"]) == 3 and dm.describe()["max_force"] == 50.0


def test_unknown_label_key_names_file_and_frame():
    with pytest.raises(
        DataError, match=r"Si_train.xyz, frame 57: energy missing \(looked for 'E_dft'\)"
    ):
        module(label_keys=LabelKeys(energy="E_dft"))


def test_element_only_in_test_set_is_rejected(tmp_path):
    frames = ase.io.read(SI, "57:62")
    ase.io.write(tmp_path / "train.xyz", frames[:3])
    odd = frames[4]
    odd.numbers[0] = 32  # Ge
    odd.calc.atoms.numbers[0] = 32
    ase.io.write(tmp_path / "test.xyz", [frames[3], odd])
    with pytest.raises(
        DataError, match=r"test.xyz, frame 1: element\(s\) Ge not among the species \(Si\)"
    ):
        module(train=tmp_path / "train.xyz", test=tmp_path / "test.xyz", index=":")
    dm = module(
        train=tmp_path / "train.xyz", test=tmp_path / "test.xyz", index=":", on_error="skip"
    )
    assert len(dm.splits["test"]) == 1 and dm.describe()["num_bad_frames"] == 1


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        module(train=tmp_path / "nope.xyz")


def test_worker_processes_load_the_same_batches():
    plain = [b.pos for b in module(shuffle=False, batch_size=4).train_dataloader()]
    workers = [b.pos for b in module(shuffle=False, batch_size=4, num_workers=1).train_dataloader()]
    assert len(plain) == len(workers)
    assert all(torch.equal(a, b) for a, b in zip(plain, workers, strict=True))


def test_the_minimum_distance_is_a_setting(tmp_path):
    path = write_bad(tmp_path, "overlap")
    kept = module(train=path, index=":", min_distance=0.01, val_fraction=0.0, test_fraction=0.0)
    assert len(kept.splits["train"]) == 4
