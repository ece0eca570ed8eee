"""A run killed with SIGKILL mid-epoch continues from its last checkpoint when rerun."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.test_train import tiny

STEPS_PER_EPOCH = 8  # 16 training frames, batch 2


def train_overrides(run: Path, epochs: int = 3) -> list[str]:
    """``mlip train`` overrides for ``epochs`` epochs of STEPS_PER_EPOCH steps, progress bar on."""
    return tiny(
        run,
        "data.index=57:81",  # 24 frames: 16 train / 4 val / 4 test
        "data.val_fraction=0.17",
        "data.test_fraction=0.17",
        "cutoff=4.0",
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=true",
    )


def run_command(run: Path, epochs: int = 3) -> list[str]:
    return [sys.executable, "-m", "mlip.cli", "train", *train_overrides(run, epochs)]


def wait_for(pattern: str, log: Path, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text(errors="replace")):
            return
        if process.poll() is not None:
            raise AssertionError(f"training ended before {pattern!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"timed out waiting for {pattern!r}")


def signal_mid_epoch_1(run: Path, log: Path, send) -> subprocess.Popen:
    """Start a run, ``send(process)`` when the progress bar says epoch 1 is part-way (2..6 of 8
    batches), wait for the process to end and return it."""
    with log.open("w") as out:
        process = subprocess.Popen(
            run_command(run), stdout=out, stderr=subprocess.STDOUT, cwd=log.parent
        )
        try:
            wait_for(r"Epoch 1:\s+\d+%\|[^|]*\| [2-6]/8", log, process)
            send(process)
        finally:
            process.wait(timeout=60)
    return process


def optimizer_steps(checkpoint: dict) -> float:
    return float(checkpoint["optimizer_states"][0]["state"][0]["step"])


def test_sigkill_mid_epoch_then_rerun_resumes(tmp_path):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    # SIGKILL: no handler, no cleanup
    process = signal_mid_epoch_1(run, tmp_path / "first.log", subprocess.Popen.kill)
    assert process.returncode == -9

    killed = torch.load(last, weights_only=True)  # intact after the kill
    assert killed["epoch"] == 0 and killed["global_step"] == STEPS_PER_EPOCH
    assert optimizer_steps(killed) == STEPS_PER_EPOCH

    done = subprocess.run(
        run_command(run), capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"resuming from {last} (after epoch 0, global step {STEPS_PER_EPOCH})" in done.stdout
    assert "Model file:" in done.stdout

    final = torch.load(last, weights_only=True)
    total = 3 * STEPS_PER_EPOCH
    assert final["epoch"] == 2 and final["global_step"] == total
    # optimiser, EMA and scheduler continued from the checkpoint rather than starting over
    assert optimizer_steps(final) == total
    assert int(final["state_dict"]["ema.num_updates"]) == total
    assert final["lr_schedulers"][0]["last_epoch"] == 3
    # the rerun trained epochs 1 and 2 only (its own CSV log version holds no epoch 0)
    rows = list(csv.DictReader((run / "logs" / "version_1" / "metrics.csv").open()))
    epochs = {int(row["epoch"]) for row in rows if row.get("train/loss_epoch")}
    assert epochs == {1, 2}


def test_sigterm_exits_non_zero_and_the_rerun_resumes(tmp_path):
    """SIGTERM (a scheduler's or `docker stop`'s) ends the run with status 143 and a line saying
    how to continue; the rerun resumes from the last finished epoch."""
    run = tmp_path / "run"
    log = tmp_path / "first.log"
    process = signal_mid_epoch_1(run, log, subprocess.Popen.terminate)
    text = log.read_text()
    assert process.returncode == 143, text[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    assert f"terminated by SIGTERM; {last} holds after epoch 0: rerun" in text
    assert "Traceback" not in text and not (run / "model.pt").exists()
    done = subprocess.run(
        run_command(run), capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {last} (after epoch 0" in done.stdout


def test_a_second_run_on_a_live_directory_is_refused_and_a_kill_leaves_no_lock(tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen(  # long enough to outlast the second's start-up
            run_command(run, epochs=1000), stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path
        )
        try:
            wait_for(r"Epoch 0:", log, first)
            config = (run / ".hydra" / "config.yaml").read_text()
            second = subprocess.run(
                [*run_command(run), "seed=7"], capture_output=True, text=True, cwd=tmp_path
            )
            assert first.poll() is None  # still training, undisturbed
            first.kill()
        finally:
            first.wait(timeout=60)
    assert second.returncode == 2
    assert f"run directory {run} is in use by another mlip train (pid {first.pid})" in second.stderr
    assert (run / ".hydra" / "config.yaml").read_text() == config  # the first run's record
    # the killed run left nothing stuck; its epochs exceed this max_epochs, which is one line
    fewer = subprocess.run(run_command(run), capture_output=True, text=True, cwd=tmp_path)
    assert fewer.returncode == 2 and "Traceback" not in fewer.stderr
    assert "checkpoint with current_epoch=" in fewer.stderr and "max_epochs=3" in fewer.stderr
    third = subprocess.run(
        [*run_command(run), "resume=false"], capture_output=True, text=True, cwd=tmp_path
    )
    assert third.returncode == 0, third.stderr[-3000:]
