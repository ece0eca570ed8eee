"""The student: trained on the teacher's labels by the ordinary training run, then compared with it.

:meth:`Student.train` runs ``mlip train data=lmdb data.train=labels_train.aselmdb
data.test=labels_test.aselmdb`` (plus the student's own overrides) through
:func:`mlip.train.runner.train`, resuming as that does; :func:`errors_against_teacher` tables the
student's errors on the held-out frames per ``config_type`` (:mod:`mlip.sim.evaluate`);
:func:`md_speed` times MD steps of teacher and student side by side.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from mlip.distill.perturb import unlabelled
from mlip.nn.potential import Potential
from mlip.sim.evaluate import errors, predict
from mlip.sim.md import make_integrator, thermalize


class Student:
    """How the student is trained.

    Args:
        model: the ``model`` group of a student trained from scratch (``facet_small``); a
            fine-tuned one has its base model's architecture, and this is not used.
        overrides: ``mlip train`` overrides (``model.channels=...``, ``trainer.max_epochs=...``);
            the data (``data=lmdb`` and its files), ``run_dir`` and ``seed`` are set by
            distillation and come first, so these may change any other data key
            (``data.batch_size``).
        finetune_from: a model file (or ``default``) to fine-tune from (``finetune_from=``); None
            trains from scratch.
        md_speed_steps: MD steps timed for teacher and student each (0: not timed).
    """

    def __init__(
        self,
        model: str = "facet_small",
        overrides: Sequence[str] = (),
        finetune_from: str | None = None,
        md_speed_steps: int = 20,
    ) -> None:
        self.model = model
        self.overrides = [str(o) for o in overrides]
        self.finetune_from = finetune_from
        self.md_speed_steps = int(md_speed_steps)

    def train_overrides(
        self,
        train: Path,
        test: Path | None,
        run_dir: Path,
        seed: int,
        progress: bool = True,
        max_force: float | None = None,
    ) -> list[str]:
        """The ``mlip train`` overrides of the student's run (``progress``: its progress bars;
        ``max_force``: ``data.max_force``, eV/Å)."""
        data = ["data=lmdb", f"data.train={_quoted(train)}"]
        data.append(f"data.test={_quoted(test)}" if test is not None else "data.test_fraction=0.0")
        if max_force is not None:
            data.append(f"data.max_force={float(max_force)}")
        ours = [*data, f"run_dir={_quoted(run_dir)}", f"seed={seed}"]
        if not progress:
            ours += ["data.progress=false", "trainer.enable_progress_bar=false"]
        if self.finetune_from:
            ours.append(f"finetune_from={_quoted(self.finetune_from)}")
        else:
            ours.append(f"model={self.model}")
        return [*ours, *self.overrides]

    def train(self, overrides: Sequence[str]) -> Any:
        """Train (or continue training) with ``overrides`` (:meth:`train_overrides`); returns the
        :class:`~mlip.train.runner.TrainResult`."""
        from mlip.train.runner import compose
        from mlip.train.runner import train as run

        overrides = list(overrides)
        return run(compose(overrides), overrides=overrides)


def errors_against_teacher(potential: Potential, frames: Sequence[Atoms]) -> dict[str, dict]:
    """``{"all": errors, <config_type>: errors, ...}`` of ``potential`` on teacher-labelled
    ``frames`` (:func:`mlip.sim.evaluate.errors`: MAE/RMSE in meV/atom, meV/Å, meV/Å³)."""
    pred = predict(potential, frames)
    table = {"all": errors(pred)}
    table.update({group: errors(pred.select(group)) for group in pred.groups})
    return table


def md_speed(
    calculator: Calculator, atoms: Atoms, steps: int, temperature_K: float = 300.0
) -> float:
    """Wall seconds per Langevin step (2 fs) of ``calculator`` on ``atoms``, after two warm-up
    steps (seeded, so teacher and student start alike)."""
    work = unlabelled(atoms)
    work.calc = calculator
    rng = np.random.default_rng(0)
    thermalize(work, temperature_K, rng)
    dyn = make_integrator(work, "nvt", temperature_K, 2.0, "langevin", 0.02, rng=rng)
    dyn.run(2)
    started = time.perf_counter()
    dyn.run(steps)
    return (time.perf_counter() - started) / steps


def _quoted(path: str | os.PathLike) -> str:
    """A path as a Hydra override value (quoted: paths may hold ``=``, ``,`` or spaces)."""
    text = os.fspath(path).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


__all__ = ["Student", "errors_against_teacher", "md_speed"]
