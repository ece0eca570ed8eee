"""Fine-tuning (``finetune_from``): growth to new elements, E0s, freezing, refusals, replay, chain.

The base domain is fcc Cu and the new data fcc Au (or a CuAu alloy), both labelled by ASE's EMT;
the base is a tiny one-layer Facet trained for a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

import mlip
import mlip.cli
from mlip import keys
from mlip.data.graph import atoms_to_batch
from mlip.errors import ConfigError
from mlip.export import sha256
from mlip.nn.config import default_dtype
from mlip.train import finetune
from mlip.train.runner import compose, train

from .conftest import make_model

ROOT = Path(__file__).resolve().parent.parent
SI_LMDB = ROOT / "data" / "aselmdb_samples" / "zuo2020_Si_train_first32.aselmdb"
RUN = [
    "trainer.enable_progress_bar=false",
    "data.progress=false",
    "data.batch_size=4",
    "data.val_fraction=0.2",
    "data.test_fraction=0",
]


def emt_frames(symbols: str, count: int, seed: int) -> list:
    """``count`` rattled, strained 8-atom fcc cells; ``symbols``: "Cu", "Au" or "CuAu" (random
    quarter of Au), with EMT energies, forces and stress."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        atoms = bulk("Cu", "fcc", a=3.7 if "Au" in symbols else 3.6, cubic=True).repeat((2, 1, 1))
        if symbols == "Au":
            atoms.symbols[:] = "Au"
            atoms.set_cell(atoms.cell * 4.08 / 3.7, scale_atoms=True)
        elif symbols == "CuAu":
            atoms.symbols[rng.choice(len(atoms), 2, replace=False)] = "Au"
        strain = np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))
        atoms.set_cell(atoms.cell.array @ (strain + strain.T) / 2, scale_atoms=True)
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        labels = dict(
            energy=atoms.get_potential_energy(),
            forces=atoms.get_forces(),
            stress=atoms.get_stress(),
        )
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("emt")
    files = {}
    for name, symbols, count, seed in (
        ("cu", "Cu", 30, 0),
        ("cu_test", "Cu", 10, 1),
        ("au", "Au", 30, 2),
        ("au_test", "Au", 10, 3),
        ("cuau", "CuAu", 20, 4),
    ):
        files[name] = folder / f"{name}.xyz"
        ase.io.write(files[name], emt_frames(symbols, count, seed))
    return files


@pytest.fixture(scope="module")
def base(data, tmp_path_factory) -> Path:
    """A tiny Facet trained on Cu (cutoff 4 Å, float64): the base model file."""
    run = tmp_path_factory.mktemp("base") / "run"
    overrides = [
        f"run_dir={run}",
        f"data.train={data['cu']}",
        "cutoff=4.0",
        "dtype=float64",
        "model.channels=[8,4,4]",
        "model.num_layers=2",
        "model.grid_channels=4",
        "model.grid_hidden=8",
        "model.grid_species=true",
        "trainer.max_epochs=8",
        "optim.optimizer.lr=0.02",
        *RUN,
    ]
    return train(compose(overrides), overrides).model_path


def finetune_run(run: Path, base: Path, train_file: Path, *extra: str) -> list[str]:
    return [
        f"run_dir={run}",
        f"finetune_from={base}",
        f"data.train={train_file}",
        "trainer.max_epochs=2",
        *RUN,
        *extra,
    ]


def energies(potential: mlip.Potential, frames: list) -> torch.Tensor:
    batch = atoms_to_batch(frames, potential.cutoff, dtype=potential.e0.dtype)
    return potential(batch, forces=True)


def force_rmse(potential: mlip.Potential, path: Path) -> float:
    frames = ase.io.read(path, ":")
    pred = energies(potential, frames)[keys.FORCES].detach()
    label = torch.tensor(np.concatenate([a.get_forces() for a in frames]), dtype=pred.dtype)
    return float((pred - label).square().mean().sqrt())


# -- growth -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["facet", "mace"])
def test_growth_leaves_the_base_elements_energies_unchanged(family):
    torch.manual_seed(0)
    overrides = {"grid_species": True} if family == "facet" else {}
    with default_dtype(torch.float64):
        model = make_model(family, num_species=2, **overrides)
        base = mlip.Potential(model, 4.0, [14, 8], e0=[-4.0, -2.0], scale=[1.3, 0.7])
    with torch.no_grad():  # no two species alike, so the rows' mean differs from each row
        for p in base.parameters():
            p.add_(0.1 * torch.randn_like(p))
    grown = finetune.grow(base, [14, 8, 32, 6])
    assert grown.species.tolist() == [14, 8, 32, 6]
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.symbols[[1, 5]] = "O"
    atoms.rattle(0.1, seed=1)
    before, after = energies(base, [atoms]), energies(grown, [atoms])
    torch.testing.assert_close(after[keys.ENERGY], before[keys.ENERGY], rtol=0, atol=1e-10)
    torch.testing.assert_close(after[keys.FORCES], before[keys.FORCES], rtol=0, atol=1e-10)
    # every per-element table grew by the mean of the base rows; nothing else changed
    old, new = base.state_dict(), grown.state_dict()
    grew = [k for k in old if old[k].shape != new[k].shape and k not in ("species",)]
    assert "model.embedding.weight" in grew and "e0" in grew and "scale" in grew
    torch.testing.assert_close(new["model.embedding.weight"][:2], old["model.embedding.weight"])
    torch.testing.assert_close(
        new["model.embedding.weight"][2], old["model.embedding.weight"].mean(0)
    )
    assert new["scale"].tolist() == pytest.approx([1.3, 0.7, 1.0, 1.0])
    mixed = atoms.copy()
    mixed.symbols[[0, 2]] = "Ge"
    assert torch.isfinite(energies(grown, [mixed])[keys.ENERGY]).all()


def test_growth_refuses_to_reorder_the_base_elements(model_file):
    base = mlip.load_model(model_file)
    with pytest.raises(ValueError, match="must start with"):
        finetune.grow(base, [6, 1, 8, 14, 32])


# -- a fine-tuning run ----------------------------------------------------------------------------


def test_finetune_onto_a_new_element(base, data, tmp_path):
    base_potential = mlip.load_model(base)
    overrides = finetune_run(
        tmp_path / "run", base, data["cuau"], "finetune.e0=keep", "trainer.max_epochs=6",
        "finetune.lr=0.01", "finetune.warmup_steps=4",
    )  # fmt: skip
    cfg = compose(overrides)
    path, start_base = finetune.prepare(cfg, overrides)
    assert cfg.cutoff == 4.0 and cfg.dtype == "float64"  # taken from the base file
    assert cfg.optim.optimizer.lr == 0.01 and cfg.module.warmup_steps == 4
    assert cfg.model.channels == [8, 4, 4] and cfg.model.grid_species  # the base's architecture

    result = train(compose(overrides), overrides)
    tuned = mlip.load_model(result.model_path)
    assert tuned.elements == ["Cu", "Au"]
    info = tuned.metadata["finetune"]
    assert info["base_sha256"] == sha256(base) and info["new_elements"] == ["Au"]
    assert info["e0"]["mode"] == "keep"
    assert info["e0"]["used_eV"]["Cu"] == pytest.approx(info["e0"]["base_eV"]["Cu"], abs=1e-12)
    assert info["kept_from_base"]["avg_num_neighbors"] == pytest.approx(
        base_potential.model.config["avg_num_neighbors"]
    )

    # at step 0, the run's potential gives the base model's energies on Cu (E0 kept)
    grown = finetune.grow(start_base, [29, 79])
    cu = ase.io.read(data["cu_test"], ":")
    torch.testing.assert_close(
        energies(grown, cu)[keys.ENERGY], energies(base_potential, cu)[keys.ENERGY],
        rtol=0, atol=1e-10,
    )  # fmt: skip
    # and training lowered the error on the new data
    start_error = force_rmse(_start_potential(overrides), data["cuau"])
    assert force_rmse(tuned, data["cuau"]) < 0.8 * start_error


def _start_potential(overrides: list[str]) -> mlip.Potential:
    """The potential a fine-tuning run starts from (before its first step)."""
    from hydra.utils import instantiate

    cfg = compose(overrides)
    path, base = finetune.prepare(cfg, overrides)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup()
    stats = datamodule.statistics
    potential, _ = finetune.start(
        base, path, instantiate(cfg.finetune), stats.species,
        dict(zip(stats.species, stats.e0, strict=True)),
        lambda fixed: datamodule.statistics_pass.fit_e0({**datamodule.isolated_e0, **fixed}),
    )  # fmt: skip
    return potential


def test_e0_refit_takes_the_new_datas_references(base, data, tmp_path):
    shifted = ase.io.read(data["cu"], ":")
    for atoms in shifted:  # another DFT code: every Cu atom 0.5 eV lower
        calc = atoms.calc
        energy = calc.results["energy"] - 0.5 * len(atoms)
        atoms.calc = SinglePointCalculator(atoms, **{**calc.results, "energy": energy})
    ase.io.write(tmp_path / "shifted.xyz", shifted)
    overrides = finetune_run(tmp_path / "run", base, tmp_path / "shifted.xyz")
    potential = _start_potential(overrides)
    base_e0 = mlip.load_model(base).e0.item()
    assert potential.e0.item() == pytest.approx(base_e0 - 0.5, abs=1e-6)


def test_architecture_overrides_are_refused_naming_the_key(base, data, tmp_path, capsys):
    overrides = finetune_run(tmp_path / "run", base, data["cu"], "model.channels=[16,8,8]")
    with pytest.raises(ConfigError, match=r"model\.channels=\[16, 8, 8\].*channels=\[8, 4, 4\]"):
        train(compose(overrides), overrides)
    assert not (tmp_path / "run").exists()  # refused before the run directory is touched
    argv = ["train", *finetune_run(tmp_path / "run", base, data["cu"], "model=mace")]
    assert mlip.cli.main(argv) == 2
    assert "model=...: a fine-tuning run takes its model from" in capsys.readouterr().err
    assert mlip.cli.main(["train", *finetune_run(tmp_path / "x", "nope.pt", data["cu"])]) == 2
    assert "finetune_from=nope.pt: no such model file" in capsys.readouterr().err
    same = finetune_run(tmp_path / "same", base, data["cu"], "model.channels=[8,4,4]")
    cfg = compose(same)
    finetune.prepare(cfg, same)  # giving the base's own value is not a change


def test_cutoff_and_dtype_given_override_the_base_with_a_warning(base, data, tmp_path):
    overrides = finetune_run(tmp_path / "run", base, data["cu"], "cutoff=4.5", "dtype=float32")
    cfg = compose(overrides)
    with pytest.warns(UserWarning) as caught:
        _, potential = finetune.prepare(cfg, overrides)
    messages = " ".join(str(w.message) for w in caught)
    assert "cutoff=4.5 overrides the base model's cutoff 4.0" in messages
    assert "dtype=float32 overrides" in messages
    assert potential.cutoff == 4.5 and potential.model.config["r_max"] == 4.5
    assert potential.e0.dtype == torch.float32


def test_freeze_keeps_the_base_rows_and_trains_the_new_ones(base, data, tmp_path):
    overrides = finetune_run(
        tmp_path / "run", base, data["cuau"], "finetune.freeze=[embedding,convolutions.0]",
        "finetune.lr=0.01", "finetune.warmup_steps=0",
    )  # fmt: skip
    result = train(compose(overrides), overrides)
    before = mlip.load_model(base).model.state_dict()
    after = result.module.potential.model.state_dict()
    torch.testing.assert_close(after["embedding.weight"][0], before["embedding.weight"][0])
    assert not torch.allclose(after["embedding.weight"][1], before["embedding.weight"][0])
    for key, value in before.items():
        if key.startswith("convolutions.0.") and value.is_floating_point():
            torch.testing.assert_close(after[key], value, rtol=0, atol=0)
    assert not torch.allclose(after["readout.0.weight"], before["readout.0.weight"])
    frozen = mlip.load_model(result.model_path).metadata["finetune"]["frozen"]
    assert "embedding.weight" in frozen and any(n.startswith("convolutions.0.") for n in frozen)

    with pytest.raises(ConfigError, match=r"finetune\.freeze='nothing' matches no parameter"):
        bad = finetune_run(tmp_path / "bad", base, data["cu"], "finetune.freeze=[nothing]")
        train(compose(bad), bad)


def test_finetune_from_a_bundled_model_with_streamed_data(tmp_path):
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        "finetune_from=si",
        "data=lmdb",
        f"data.train={SI_LMDB}",
        "trainer.max_epochs=1",
        "data.val_fraction=0.25",
        *RUN[:3],
    ]
    result = train(compose(overrides), overrides)
    tuned = mlip.load_model(result.model_path)
    assert result.datamodule.stream and tuned.elements == ["Si"]
    assert tuned.metadata["finetune"]["base_model"].endswith("si.pt")
    text = _info(tuned_path := result.model_path)
    assert "fine-tuned" in text and f"from {tuned.metadata['finetune']['base_model']}" in text
    assert str(tuned_path) in text


def _info(path: Path) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert mlip.cli.main(["info", str(path)]) == 0
    return out.getvalue()


# -- replay -------------------------------------------------------------------------------------


def test_replay_limits_forgetting_of_the_base_domain(base, data, tmp_path):
    """Fine-tuning on Au at a high learning rate forgets Cu; replaying Cu frames forgets less."""
    shared = ("trainer.max_epochs=6", "finetune.lr=0.02", "finetune.warmup_steps=0", "seed=3")
    plain = finetune_run(tmp_path / "plain", base, data["au"], *shared)
    replay = finetune_run(
        tmp_path / "replay", base, data["au"], *shared, f"finetune.replay={data['cu']}",
        "finetune.replay_ratio=1.0",
    )  # fmt: skip
    before = force_rmse(mlip.load_model(base), data["cu_test"])
    forgot = {
        name: force_rmse(mlip.load_model(train(compose(o), o).model_path), data["cu_test"])
        for name, o in (("plain", plain), ("replay", replay))
    }
    assert forgot["plain"] > 1.5 * before  # the forgetting this test is about happens
    assert forgot["replay"] - before < 0.5 * (forgot["plain"] - before)
    log = (tmp_path / "replay" / "logs" / "version_0" / "metrics.csv").read_text()
    assert "val_replay/forces_rmse_meV_per_A" in log and "val/forces_rmse_meV_per_A" in log


def test_warmup_scales_the_first_steps_and_leaves_the_schedule_alone():
    from mlip.train.loss import WeightedLoss
    from mlip.train.module import PotentialModule

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    with default_dtype(torch.float64):
        potential = mlip.Potential(make_model("facet"), 4.0, [1, 6, 8, 14])
    module = PotentialModule(potential, WeightedLoss(), torch.optim.SGD, warmup_steps=4)
    weight.grad = torch.ones(1)
    module._step(optimizer)  # global step 0 without a trainer: a quarter of the rate
    assert weight.item() == pytest.approx(-0.25) and optimizer.param_groups[0]["lr"] == 1.0
    module.warmup_steps = 0
    module._step(optimizer)
    assert weight.item() == pytest.approx(-1.25)


def test_pseudo_replay_labels_once_and_a_rerun_resumes_without_relabelling(base, data, tmp_path):
    run = tmp_path / "run"
    overrides = finetune_run(
        run, base, data["au"], "finetune.replay=pseudo",
        f"finetune.pseudo_structures={data['cu_test']}", "finetune.pseudo_copies=1",
        "trainer.max_epochs=1",
    )  # fmt: skip
    first = train(compose(overrides), overrides)
    pseudo = run / "replay_pseudo.extxyz"
    labelled = ase.io.read(pseudo, ":")
    assert len(labelled) == 20 and {a.info["config_type"] for a in labelled} == {"pseudo"}
    base_energy = energies(mlip.load_model(base), labelled[:1])[keys.ENERGY].item()
    assert labelled[0].get_potential_energy() == pytest.approx(base_energy, abs=1e-6)
    written = pseudo.stat().st_mtime_ns

    again = [*overrides, "trainer.max_epochs=2"]
    second = train(compose(again), again)
    assert second.trainer.global_step == 2 * first.trainer.global_step  # resumed, not restarted
    assert pseudo.stat().st_mtime_ns == written
    replay = mlip.load_model(second.model_path).metadata["finetune"]["replay"]
    assert replay["pseudo"] and replay["num_train_frames"] + replay["num_val_frames"] == 20
    assert "pseudo-labelled by the base model" in _info(second.model_path)


def test_finetune_with_replay_under_ddp(base, data, tmp_path):
    import subprocess
    import sys

    overrides = finetune_run(
        tmp_path / "ddp", base, data["cuau"], f"finetune.replay={data['cu']}",
        "trainer.max_epochs=1", "trainer.devices=2", "trainer.strategy=ddp",
        "trainer.accelerator=cpu",
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "mlip.cli", "train", *overrides],
        capture_output=True, text=True, cwd=tmp_path, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    tuned = mlip.load_model(tmp_path / "ddp" / "model.pt")
    assert tuned.elements == ["Cu", "Au"] and tuned.metadata["finetune"]["replay"]["ratio"] == 0.5
    log = (tmp_path / "ddp" / "logs" / "version_0" / "metrics.csv").read_text()
    assert "val_replay/forces_rmse_meV_per_A" in log
