"""logger=wandb with WANDB_MODE=offline writes an offline run holding the logged metrics."""

from __future__ import annotations

import pytest

from mlip.train.runner import compose, train
from tests.test_train import tiny

wandb = pytest.importorskip("wandb")


def test_wandb_offline_run_holds_the_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    try:
        result = train(compose(tiny(run, "logger=wandb", "run_name=wandb_test")))
    finally:
        wandb.teardown()
    assert result.model_path.is_file()
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    records = list(offline[0].glob("run-*.wandb"))
    assert len(records) == 1
    content = records[0].read_bytes()  # history, config and summary records (protobuf)
    for key in (
        "val/loss",
        "val/forces_rmse_meV_per_A",
        "test/energy_mae_meV_per_atom",
        "train/loss_epoch",
    ):
        assert key.encode() in content, key
    assert b"mlip.nn.facet.Facet" in content  # the run config
    assert list((run / "logs").glob("version_0/metrics.csv"))  # CSV as well
