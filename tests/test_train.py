"""Training: loss, EMA, atomic checkpoints, resume rules, NaN guard, and train -> export -> reload.

Training runs here are in-process and tiny (12 small Si frames, an 8-channel one-layer Facet, one or
two epochs); the SIGKILL, DDP and W&B tests live in their own files.
"""

from __future__ import annotations

import os
from pathlib import Path

import ase.io
import pytest
import torch
from torch_geometric.data import Batch

import mlip
import mlip.cli
from mlip import keys
from mlip.data.graph import atoms_to_batch
from mlip.errors import NonFiniteLossError
from mlip.export import load_checkpoint, remove_partial_checkpoints
from mlip.train.checkpoint import AtomicCheckpointIO
from mlip.train.ema import ExponentialMovingAverage
from mlip.train.loss import WeightedLoss
from mlip.train.runner import checkpoint_to_resume, compose, train

from .conftest import TINY_RUN

ROOT = Path(__file__).resolve().parent.parent
SI = ROOT / "data/zuo2020/Si_train.xyz"


def tiny(run_dir: Path, *extra: str) -> list[str]:
    """Overrides for a run of a few seconds: 12 frames (8 train / 2 val / 2 test), batch 2."""
    return [
        f"run_dir={run_dir}",
        f"data.train={SI}",
        "data.index=57:69",
        "data.batch_size=2",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        *TINY_RUN,
        *extra,
    ]


# -- pieces -----------------------------------------------------------------------------------------


def labelled_batch(has_stress: list[bool]) -> Batch:
    frames = ase.io.read(SI, f"57:{57 + len(has_stress)}")
    batch = atoms_to_batch(frames, 3.0, dtype=torch.float64, labels=True)
    batch.has_stress = torch.tensor(has_stress)
    return batch


def fake_predictions(batch: Batch, offset: float) -> dict[str, torch.Tensor]:
    return {
        keys.ENERGY: batch[keys.ENERGY] + offset * torch.bincount(batch[keys.BATCH]),
        keys.FORCES: batch[keys.FORCES] + offset,
        keys.STRESS: batch[keys.STRESS] + offset,
    }


def test_loss_terms_use_labelled_entries_only_and_normalise_globally():
    batch = labelled_batch([True, False, True])
    loss = WeightedLoss(energy_weight=2.0, forces_weight=3.0, stress_weight=5.0)
    pred = fake_predictions(batch, 0.1)
    pred[keys.STRESS][1] += 100.0  # no stress label: must not count
    terms = loss.terms(pred, batch)
    assert terms[keys.STRESS][1].item() == 18  # 2 structures x 9 components
    assert terms[keys.FORCES][1].item() == 3 * batch.num_nodes
    assert loss(pred, batch).item() == pytest.approx((2 + 3 + 5) * 0.01)
    # data-parallel form: global normalisers, here twice the local ones (two equal processes)
    halves = {name: 2 * weight_sum / 2 for name, (_, weight_sum) in terms.items()}
    assert loss.combine(terms, halves).item() == pytest.approx(loss(pred, batch).item())
    huber = WeightedLoss(kind="huber", huber_delta=0.01)
    assert huber.penalty(torch.tensor([1.0])).item() == pytest.approx(0.01 * (1.0 - 0.005))


def test_ema_warms_up_follows_parameters_and_is_in_the_state_dict():
    model = torch.nn.Linear(2, 1)
    ema = ExponentialMovingAverage(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(1.0)
    before = ema.module.weight.clone()
    ema.update(model)  # first decay min(0.99, 1/10) = 0.1
    torch.testing.assert_close(ema.module.weight, 0.1 * before + 0.9 * torch.ones_like(before))
    assert not ema.module.weight.requires_grad
    assert int(ema.state_dict()["num_updates"]) == 1


def test_atomic_checkpoint_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    (tmp_path / ".last.ckpt.abc.tmp").write_bytes(b"left by SIGKILL")
    assert [p.name for p in remove_partial_checkpoints(tmp_path)] == [".last.ckpt.abc.tmp"]


def test_resume_rules(tmp_path):
    assert checkpoint_to_resume(tmp_path, "auto") is None
    assert checkpoint_to_resume(tmp_path, False) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint_to_resume(tmp_path, True)
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    assert checkpoint_to_resume(tmp_path, "auto") == last
    assert checkpoint_to_resume(tmp_path, True) == last
    assert checkpoint_to_resume(tmp_path, False) is None
    with pytest.raises(ValueError):
        checkpoint_to_resume(tmp_path, "maybe")


def test_config_nodes_name_their_constructors():
    cfg = compose()
    for node in (cfg.data, cfg.model, cfg.trainer, cfg.loss, cfg.module, cfg.optim.optimizer):
        assert "_target_" in node
    assert "num_species" not in cfg.model and "avg_num_neighbors" not in cfg.model
    assert cfg.model.r_max == cfg.cutoff
    assert compose(["logger=wandb"]).logger.keys() == {"csv", "wandb"}


# -- training runs ----------------------------------------------------------------------------------


def test_train_export_reload_gives_the_same_energies(tmp_path):
    run = tmp_path / "run"
    result = train(compose(tiny(run)))
    assert result.model_path == run / "model.pt"
    trained = result.module.eval_potential
    loaded = mlip.load_model(result.model_path)
    frames = ase.io.read(SI, "57:69")
    batch = atoms_to_batch(frames, 3.0, dtype=torch.float32)
    expected = trained(batch, forces=True, create_graph=False)
    got = loaded(batch, forces=True)
    torch.testing.assert_close(got[keys.ENERGY], expected[keys.ENERGY], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[keys.FORCES], expected[keys.FORCES], rtol=0, atol=1e-6)
    assert loaded.e0.dtype == torch.float32

    meta = loaded.metadata
    assert meta["data"]["num_train_frames"] == 8 and meta["data"]["num_test_frames"] == 2
    assert meta["statistics"]["e0_source"] == "least_squares"
    assert loaded.model.avg_num_neighbors.item() == pytest.approx(
        meta["statistics"]["avg_num_neighbors"]
    )
    assert {"energy_rmse_meV_per_atom", "forces_mae_meV_per_A"} <= set(meta["errors"]["test"])
    assert meta["config"]["model"]["_target_"] == "mlip.nn.facet.Facet"

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 4
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert list((run / "logs").glob("version_0/metrics.csv"))

    # `mlip export RUN_DIR` rebuilds the same model from the best checkpoint, without Hydra
    assert mlip.cli.main(["export", str(run), "--output", str(tmp_path / "again.pt")]) == 0
    again = mlip.load_model(tmp_path / "again.pt")(batch, forces=True)
    torch.testing.assert_close(again[keys.ENERGY], expected[keys.ENERGY], rtol=0, atol=1e-6)


def nan_at(calls: set[int]):
    """A ``WeightedLoss.combine`` whose calls numbered in ``calls`` (from 1) return NaN."""
    original, count = WeightedLoss.combine, [0]

    def combine(loss, terms, normalisers=None):
        count[0] += 1
        value = original(loss, terms, normalisers)
        return value * float("nan") if count[0] in calls else value

    return combine


def test_one_nonfinite_loss_skips_the_step_and_is_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(WeightedLoss, "combine", nan_at({2}))
    result = train(compose(tiny(tmp_path / "run")))
    assert result.module.nonfinite_steps == 1
    assert result.trainer.global_step == 3  # 4 batches, one skipped
    assert all(torch.isfinite(p).all() for p in result.module.potential.parameters())


def test_repeated_nonfinite_losses_stop_and_keep_the_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(WeightedLoss, "combine", nan_at(set(range(5, 100))))
    run = tmp_path / "run"
    with pytest.raises(
        NonFiniteLossError, match="3 consecutive training steps had a non-finite loss"
    ) as stopped:
        train(compose(tiny(run, "trainer.max_epochs=2", "module.max_nonfinite=3")))
    assert "last.ckpt (the last finished epoch) is intact" in str(stopped.value)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 4
    assert all(
        torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point()
    )
    assert not (run / "model.pt").exists()
    monkeypatch.setattr(WeightedLoss, "combine", nan_at(set(range(100))))
    with pytest.raises(
        NonFiniteLossError, match="No epoch had finished, so there is no checkpoint"
    ):
        train(compose(tiny(tmp_path / "fresh", "module.max_nonfinite=3")))


def test_an_epoch_that_trained_nothing_stops_the_run(tmp_path, monkeypatch):
    """Every step of the epoch non-finite but fewer than max_nonfinite: the run still fails."""
    monkeypatch.setattr(WeightedLoss, "combine", nan_at(set(range(100))))
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="epoch 0: all 4 training steps had a non-finite"):
        train(compose(tiny(run, "module.max_nonfinite=10")))
    assert not (run / "model.pt").exists()


# -- the command line -------------------------------------------------------------------------------


def test_cli_cfg_job_and_help(capsys):
    assert mlip.cli.main(["train", "--cfg", "job", "trainer.max_epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "_target_: mlip.nn.facet.Facet" in out and "max_epochs: 7" in out
    assert mlip.cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Configuration groups" in out and "model: facet, facet_small" in out


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        ("nan_forces", "frame 3: forces contains NaN"),
        ("overlap", "frame 3: atoms 0 (Si) and 4 (Si) are 0.000 Å apart, closer than the minimum"),
    ],
)
def test_cli_bad_data_stops_before_training(tmp_path, capsys, spoil, message):
    frames = ase.io.read(SI, "57:61")
    if spoil == "nan_forces":
        forces = frames[3].get_forces()
        forces[0, 2] = float("nan")
        frames[3].calc.results["forces"] = forces
    else:  # two atoms on top of each other
        frames[3].positions[4] = frames[3].positions[0]
    bad = tmp_path / "bad.xyz"
    ase.io.write(bad, frames)
    run = tmp_path / "run"
    overrides = tiny(run, f"data.train={bad}", "data.index=:")
    cwd = os.getcwd()
    assert mlip.cli.main(["train", *overrides]) == 2
    assert os.getcwd() == cwd
    err = capsys.readouterr().err
    assert f"{bad}, {message}" in err
    assert len(err.strip().splitlines()) == 1
    assert not (run / "checkpoints").exists()


def test_last_checkpoint_holds_the_last_epoch_when_validation_never_improves(tmp_path):
    """With learning rate 0 the validation loss stays the same (up to rounding) every epoch:
    last.ckpt still follows every epoch, and a rerun of the finished run trains nothing."""
    run = tmp_path / "run"
    overrides = tiny(run, "trainer.max_epochs=3", "optim.optimizer.lr=0.0")
    train(compose(overrides))
    checkpoints = run / "checkpoints"
    assert load_checkpoint(checkpoints / "last.ckpt")["epoch"] == 2
    assert load_checkpoint(checkpoints / "best.ckpt")["epoch"] <= 2
    again = train(compose(overrides))  # resumes after the last epoch: test and export only
    assert again.trainer.global_step == load_checkpoint(checkpoints / "last.ckpt")["global_step"]
    assert (run / ".hydra" / "config.yaml").is_file()


def test_cli_corrupt_last_checkpoint_is_one_line_and_leftover_temporaries_go(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"\x00not a checkpoint" * 10)
    leftover = run / ".model.pt.abc123.tmp"  # a model file killed mid-write
    leftover.write_bytes(b"partial")
    assert mlip.cli.main(["train", *tiny(run)]) == 2
    err = capsys.readouterr().err
    assert f"{last}: unreadable checkpoint" in err and "resume=false" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not leftover.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc': an integer"),
        ("dtype=float16", "dtype='float16': choose float32 or float64"),
        ("trainer.max_time=soon", "trainer.max_time='soon': DD:HH:MM:SS or null"),
    ],
)
def test_cli_bad_config_values_stop_before_the_data_is_read(tmp_path, capsys, override, message):
    missing = tmp_path / "absent.xyz"  # never opened: the config is checked first
    overrides = tiny(tmp_path / "run", f"data.train={missing}", override)
    assert mlip.cli.main(["train", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and "absent.xyz" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / ".hydra").exists()  # refused before the directory is touched
