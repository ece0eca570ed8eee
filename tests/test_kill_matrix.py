"""Kill matrix of ``mlip train`` (nothing lost): however a run ends, its rerun resumes from the last
finished epoch, trains no epoch again, and leaves a loadable model file and no temporary files.

The SIGKILL cases hit their moment exactly, not by timing: a fork server (a fresh interpreter that
has imported what ``mlip train`` imports, once) runs each ``mlip train`` (``mlip.cli.main``, what
the ``mlip`` command calls) in a forked child with one function patched to signal the child itself,
e.g. ``torch.save`` half-way through ``last.ckpt``'s temporary file. The reruns are unpatched
children of the same server. SIGTERM and SIGINT mid-epoch go to a real ``mlip train`` subprocess.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch

import mlip
from mlip.commands.train import INTERRUPTED
from mlip.export import read_model_file
from tests.test_train_resume import (
    STEPS_PER_EPOCH,
    optimizer_steps,
    signal_mid_epoch_1,
    train_overrides,
)

EPOCHS = 3

SERVER = '''\
"""Fork server of the kill matrix. Imports what `mlip train` imports, once; then for each request
line (JSON: phase, args, log) forks a child that runs `mlip train ARGS` (mlip.cli.main) with its
output in LOG and the moment PHASE turned into a signal to itself, and answers with the child's
exit code (negative: the signal that ended it)."""
import io
import json
import os
import signal
import sys
import threading
import time
import traceback

import torch

import mlip.cli
import mlip.commands.train
import mlip.train.runner
from mlip.data.datamodule import DataModule
from mlip.train.module import PotentialModule

STEPS = int(sys.argv[1])  # optimizer steps per epoch


def kill(signum):
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signum)  # SIGINT: KeyboardInterrupt raised here, in the caller's frame


def before(cls, name, hook):
    """Make ``cls.name(*args)`` call ``hook(*args)`` first."""
    real = getattr(cls, name)

    def patched(*args, **kwargs):
        hook(*args)
        return real(*args, **kwargs)

    setattr(cls, name, patched)


def arm(phase):
    if phase == "sigint-data":  # Ctrl+C while the data are read
        before(DataModule, "setup", lambda *args: kill(signal.SIGINT))
    elif phase == "sigint-fit-start":  # Ctrl+C once Lightning has started the fit
        before(PotentialModule, "on_fit_start", lambda *args: kill(signal.SIGINT))
    elif phase in ("first-batch", "mid-epoch"):  # SIGKILL as a training batch starts
        at = {"first-batch": 0, "mid-epoch": STEPS + 3}[phase]  # global step: epoch 0 / 1

        def step(module, *args):
            if module.global_step == at:
                kill(signal.SIGKILL)

        before(PotentialModule, "training_step", step)
    elif phase in ("checkpoint-write", "model-write"):  # SIGKILL half-way through a file
        real_save = torch.save

        def target(name, obj):
            if phase == "checkpoint-write":
                return name.startswith(".last.ckpt.") and obj["epoch"] == 1
            return name.startswith(".model.pt.")

        def save(obj, f, *args, **kwargs):
            if target(os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}")), obj):
                data = io.BytesIO()
                real_save(obj, data, *args, **kwargs)
                f.write(data.getvalue()[: len(data.getvalue()) // 2])
                f.flush()
                kill(signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    elif phase == "after-rename":  # SIGKILL as soon as last.ckpt of epoch 1 is in place
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            real_replace(src, dst, *args, **kwargs)
            if os.path.basename(dst) == "last.ckpt":
                if torch.load(dst, weights_only=True)["epoch"] == 1:
                    kill(signal.SIGKILL)

        os.replace = replace
    elif phase != "rerun":
        raise ValueError(phase)


def child(request):
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    arm(request["phase"])
    return mlip.cli.main(["train", *request["args"]])


for line in sys.stdin:
    request = json.loads(line)
    assert threading.active_count() == 1  # a fork loses no other thread's work
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = child(request)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    deadline, hung = time.monotonic() + 300, False
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline and not hung:
            os.kill(pid, signal.SIGKILL)
            hung = True
        time.sleep(0.02)
    print(json.dumps("hung" if hung else os.waitstatus_to_exitcode(done[1])), flush=True)
'''

STARTING = '''\
"""`mlip train ARGS` (mlip.cli.main) with Ctrl+C as it first imports PACKAGE."""
import os
import signal
import sys

PACKAGE, ARGS = sys.argv[1], sys.argv[2:]


class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == PACKAGE:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt here, inside the import


sys.meta_path.insert(0, Interrupt())
from mlip.cli import main

assert PACKAGE not in sys.modules  # `mlip train` imports it, not `mlip`
sys.exit(main(["train", *ARGS]))
'''


@pytest.fixture(scope="module")
def mlip_train(tmp_path_factory):
    """``mlip_train(run, phase) -> (exit code, output)``: ``mlip train`` of EPOCHS epochs in
    ``run``, stopped at ``phase`` (``"rerun"``: not stopped), in a child of the fork server."""
    folder = tmp_path_factory.mktemp("server")
    (folder / "server.py").write_text(SERVER)
    errors = folder / "server.err"
    with errors.open("w") as err:
        server = subprocess.Popen(
            [sys.executable, "server.py", str(STEPS_PER_EPOCH)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=folder,
        )

    def call(run: Path, phase: str) -> tuple[int, str]:
        log = run.parent / f"{phase}.log"
        request = {"phase": phase, "args": train_overrides(run, EPOCHS), "log": str(log)}
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        answer = server.stdout.readline()
        assert answer, errors.read_text()[-3000:]
        return json.loads(answer), log.read_text()

    yield call
    server.stdin.close()
    server.wait(timeout=60)


def last_epoch(run: Path) -> int | None:
    """The epoch ``checkpoints/last.ckpt`` holds, None without one."""
    last = run / "checkpoints" / "last.ckpt"
    return torch.load(last, weights_only=True)["epoch"] if last.is_file() else None


def log_versions(run: Path) -> set[str]:
    return {path.name for path in (run / "logs").glob("version_*")}


def epochs_trained(run: Path, version: str) -> set[int]:
    """The epochs whose training loss the CSV log ``version`` holds."""
    metrics = run / "logs" / version / "metrics.csv"
    rows = list(csv.DictReader(metrics.open())) if metrics.is_file() else []
    return {int(row["epoch"]) for row in rows if row.get("train/loss_epoch")}


def rerun_resumes(run: Path, mlip_train, finished: int | None) -> None:
    """The rerun finishes the run from after epoch ``finished`` (None: from the start), training
    no epoch up to it again, and leaves a model file and no temporary files."""
    last = run / "checkpoints" / "last.ckpt"
    assert last_epoch(run) == finished
    before = log_versions(run)
    status, out = mlip_train(run, "rerun")
    assert status == 0, out[-3000:]

    if finished is None:
        assert "resuming from" not in out
    else:
        steps = (finished + 1) * STEPS_PER_EPOCH
        assert f"resuming from {last} (after epoch {finished}, global step {steps})" in out
    expected = set(range(0 if finished is None else finished + 1, EPOCHS))
    (version,) = log_versions(run) - before  # the rerun's own CSV log
    assert epochs_trained(run, version) == expected
    assert {int(e) for e in re.findall(r"Epoch (\d+):", out)} == expected  # its progress bar

    final = torch.load(last, weights_only=True)
    total = EPOCHS * STEPS_PER_EPOCH
    assert final["epoch"] == EPOCHS - 1 and final["global_step"] == total
    assert optimizer_steps(final) == total  # the optimiser's state continued, not doubled
    assert isinstance(mlip.load_model(run / "model.pt"), mlip.Potential)
    metadata = read_model_file(run / "model.pt")["metadata"]
    assert metadata["epochs"] == EPOCHS and metadata["global_step"] == total
    assert sorted(run.rglob("*.tmp")) == []  # the killed run's partial files are gone


@pytest.mark.parametrize(
    "phase, finished, partial",
    [
        ("first-batch", None, None),  # before the first checkpoint
        ("mid-epoch", 0, None),  # the 4th batch of epoch 1
        ("checkpoint-write", 0, "checkpoints/.last.ckpt.*.tmp"),  # last.ckpt of epoch 1
        ("after-rename", 1, None),  # last.ckpt of epoch 1 just renamed into place
        ("model-write", EPOCHS - 1, ".model.pt.*.tmp"),  # after the last epoch and the test
    ],
)
def test_sigkill_then_the_rerun_resumes_from_the_last_finished_epoch(
    tmp_path, mlip_train, phase, finished, partial
):
    run = tmp_path / "run"
    status, out = mlip_train(run, phase)
    assert status == -signal.SIGKILL, out[-3000:]
    assert last_epoch(run) == finished
    # a kill during a write leaves its half-written temporary file (the rerun removes it)
    temporary = [path.relative_to(run).as_posix() for path in run.rglob("*.tmp")]
    assert [fnmatch(path, partial) for path in temporary] == ([] if partial is None else [True])
    assert not (run / "model.pt").exists()
    rerun_resumes(run, mlip_train, finished)


@pytest.mark.parametrize(
    "signum, status, stopped",
    [(signal.SIGTERM, 143, "terminated by SIGTERM"), (signal.SIGINT, 130, "interrupted by SIGINT")],
)
def test_sigterm_and_sigint_mid_epoch_end_with_one_line_and_the_rerun_resumes(
    tmp_path, mlip_train, signum, status, stopped
):
    run = tmp_path / "run"
    log = tmp_path / "first.log"
    process = signal_mid_epoch_1(run, log, lambda p: p.send_signal(signum))
    text = log.read_text()
    assert process.returncode == status, text[-3000:]
    assert "Traceback" not in text
    last = run / "checkpoints" / "last.ckpt"
    message = f"mlip train: {stopped}; {last} holds after epoch 0: rerun the same command to"
    ours = re.findall(r"mlip train: [^\r\n]*", text)  # (the progress bar leaves no newline)
    assert ours[1:] == [f"{message} continue from it"], ours  # after "mlip train: run directory"
    assert not (run / "model.pt").exists()
    rerun_resumes(run, mlip_train, 0)


@pytest.mark.parametrize("package", ["torch", "hydra", "lightning"])
def test_sigint_while_importing_is_one_line_without_traceback(tmp_path, package):
    (tmp_path / "starting.py").write_text(STARTING)
    args = train_overrides(tmp_path / "run", EPOCHS)
    interrupted = subprocess.run(
        [sys.executable, "starting.py", package, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert interrupted.returncode == 130, interrupted.stdout[-2000:] + interrupted.stderr[-3000:]
    assert interrupted.stderr.strip() == f"mlip train: {INTERRUPTED}", interrupted.stderr[-3000:]


@pytest.mark.parametrize("phase", ["sigint-data", "sigint-fit-start"])
def test_sigint_while_starting_is_one_line_without_traceback(tmp_path, mlip_train, phase):
    run = tmp_path / "run"
    status, out = mlip_train(run, phase)
    assert status == 130, out[-3000:]
    assert "Traceback" not in out
    if phase == "sigint-data":  # before anything is printed
        assert out.strip() == f"mlip train: {INTERRUPTED}"
    else:
        last = run / "checkpoints" / "last.ckpt"
        message = f"mlip train: interrupted by SIGINT; {last} holds nothing: rerun the same"
        assert re.findall(r"mlip train: [^\r\n]*", out)[1:] == [
            f"{message} command to continue from it"
        ]
