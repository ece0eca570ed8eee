"""Distributed data parallel on 2 CPU processes (gloo) equals one process on the same global batch."""

from __future__ import annotations

import subprocess
import sys

import ase.io
import lightning.pytorch as pl
import torch

from mlip.train.runner import build_potential, compose, train
from tests.test_train import SI, tiny


def test_ddp_two_processes_match_one_process(tmp_path):
    frames = ase.io.read(SI, "57:63")  # different sizes: 24, 36, 24, 40 atoms train; 2 val
    ase.io.write(tmp_path / "train.xyz", frames[:4])
    ase.io.write(tmp_path / "val.xyz", frames[4:])

    def overrides(run: str, batch_size: int, *extra: str) -> list[str]:
        return tiny(
            tmp_path / run,
            f"data.train={tmp_path / 'train.xyz'}",
            f"data.val={tmp_path / 'val.xyz'}",
            "data.index=:",
            "data.test_fraction=0",
            "data.shuffle=false",
            f"data.batch_size={batch_size}",
            "dtype=float64",
            "module.ema_decay=null",
            *extra,
        )

    # one epoch = one optimiser step on all 4 frames: 2 per process, or 4 in one process
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlip.cli",
            "train",
            *overrides(
                "ddp", 2, "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu"
            ),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=400,
    )
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-4000:]
    assert "Model file:" in ddp.stdout
    single = train(compose(overrides("single", 4)))
    assert single.trainer.global_step == 1

    checkpoints = [
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)
        for run in ("ddp", "single")
    ]
    assert [c["global_step"] for c in checkpoints] == [1, 1]
    ddp_state, single_state = (c["state_dict"] for c in checkpoints)
    assert ddp_state.keys() == single_state.keys()
    for name, value in single_state.items():
        torch.testing.assert_close(ddp_state[name], value, rtol=0, atol=1e-6, msg=name)
    # and the step did move the (seeded, identical) initial weights
    cfg = compose(overrides("single", 4))
    pl.seed_everything(cfg.seed, verbose=False)
    initial = build_potential(cfg, single.datamodule).state_dict()
    moved = max(
        float((v - single_state[f"potential.{k}"]).abs().max())
        for k, v in initial.items()
        if v.numel()
    )
    assert moved > 1e-4
    assert checkpoints[1]["optimizer_states"][0]["state"][0]["step"] == 1
