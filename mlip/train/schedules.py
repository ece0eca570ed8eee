"""Learning-rate schedules over a training budget given in epochs, wall-clock time or both."""

from __future__ import annotations

import math
import time

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def duration_seconds(value: str | float | int | None) -> float | None:
    """A duration as Lightning's ``trainer.max_time`` takes it: ``"DD:HH:MM:SS"`` or seconds;
    ``None`` (no limit) stays ``None``."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 4:
            raise ValueError(f"max_time {value!r} is not DD:HH:MM:SS")
        days, hours, minutes, seconds = (float(p) for p in parts)
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return float(value)


class BudgetCosine(LRScheduler):
    """Cosine decay from the optimiser's learning rate to ``eta_min`` over the training budget.

    ``lr = eta_min + (lr0 - eta_min) (1 + cos(pi f)) / 2``, where ``f`` (capped at 1) is the larger
    of the fractions of ``max_epochs`` epochs and of ``max_time`` wall-clock time spent, so a run
    bounded by ``trainer.max_time`` anneals fully by its end however many epochs fit. Stepped once
    per epoch. The elapsed time is part of :meth:`state_dict`: a resumed run continues the schedule
    where the checkpoint left it. :class:`mlip.train.module.PotentialModule` gives every process
    of a data-parallel run rank 0's elapsed time before each step.

    Args:
        optimizer: the wrapped optimiser.
        max_epochs: epoch budget (``None`` or ``<= 0``: none, as ``trainer.max_epochs=-1``).
        max_time: time budget, ``"DD:HH:MM:SS"`` or seconds (``None``: none).
        eta_min: final learning rate.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_epochs: int | None = None,
        max_time: str | float | None = None,
        eta_min: float = 0.0,
    ) -> None:
        self.max_epochs = max_epochs if max_epochs is not None and max_epochs > 0 else None
        self.max_seconds = duration_seconds(max_time)
        if self.max_epochs is None and self.max_seconds is None:
            raise ValueError(
                "BudgetCosine needs max_epochs or max_time (trainer.max_epochs or "
                "trainer.max_time) to decay over; use optim=adamw_plateau for open-ended runs"
            )
        self.eta_min = eta_min
        self.elapsed_before = 0.0  # seconds spent before this process (resumed runs)
        self._started = time.monotonic()
        super().__init__(optimizer)

    def elapsed(self) -> float:
        """Wall-clock seconds of training so far, earlier runs of a resumed run included."""
        return self.elapsed_before + time.monotonic() - self._started

    def set_elapsed(self, seconds: float) -> None:
        """Continue from ``seconds`` of training (data-parallel runs take rank 0's clock, so that
        every process steps with the same learning rate)."""
        self.elapsed_before = float(seconds)
        self._started = time.monotonic()

    def fraction(self) -> float:
        """Fraction of the budget spent, in ``[0, 1]``."""
        spent = [0.0]
        if self.max_epochs is not None:
            spent.append(self.last_epoch / self.max_epochs)
        if self.max_seconds is not None:
            spent.append(self.elapsed() / max(self.max_seconds, 1e-9))
        return min(max(spent), 1.0)

    def get_lr(self) -> list[float]:
        factor = 0.5 * (1.0 + math.cos(math.pi * self.fraction()))
        return [self.eta_min + (base - self.eta_min) * factor for base in self.base_lrs]

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["elapsed_before"] = self.elapsed()
        state.pop("_started")
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.set_elapsed(self.elapsed_before)
