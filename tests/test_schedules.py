"""BudgetCosine: cosine decay over an epoch or wall-clock budget, resumable."""

from __future__ import annotations

import io
import math

import pytest
import torch

from mlip.train import schedules
from mlip.train.schedules import BudgetCosine, duration_seconds

LR, ETA = 0.01, 1e-4


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(schedules.time, "monotonic", fake)
    return fake


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=LR)


def lr_of(opt: torch.optim.Optimizer) -> float:
    return opt.param_groups[0]["lr"]


def cosine(fraction: float) -> float:
    return ETA + (LR - ETA) * 0.5 * (1 + math.cos(math.pi * fraction))


def test_epoch_budget(clock):
    opt = optimizer()
    scheduler = BudgetCosine(opt, max_epochs=10, eta_min=ETA)
    assert lr_of(opt) == pytest.approx(LR)
    lrs = []
    for _ in range(12):
        opt.step()
        scheduler.step()
        lrs.append(lr_of(opt))
    assert lrs[4] == pytest.approx(cosine(0.5))
    assert all(a > b for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert lrs[9:] == pytest.approx([ETA] * 3)  # held at eta_min after the budget


def test_time_budget_whichever_runs_out_first(clock):
    opt = optimizer()
    scheduler = BudgetCosine(opt, max_epochs=1000, max_time="00:00:01:40", eta_min=ETA)
    clock.now += 25.0  # a quarter of 100 s, 1 of 1000 epochs
    opt.step()
    scheduler.step()
    assert lr_of(opt) == pytest.approx(cosine(0.25))
    clock.now += 80.0
    opt.step()
    scheduler.step()
    assert lr_of(opt) == pytest.approx(ETA)


def test_resume_continues_the_elapsed_time(clock):
    opt = optimizer()
    scheduler = BudgetCosine(opt, max_time=100.0, eta_min=ETA)
    clock.now += 40.0
    opt.step()
    scheduler.step()
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    clock.now += 1000.0  # time between the crash and the restart does not count
    resumed_opt = optimizer()
    resumed = BudgetCosine(resumed_opt, max_time=100.0, eta_min=ETA)
    resumed.load_state_dict(state)
    assert resumed.elapsed() == pytest.approx(40.0)
    clock.now += 10.0
    resumed_opt.step()
    resumed.step()
    assert lr_of(resumed_opt) == pytest.approx(cosine(0.5))


def test_needs_a_budget_and_a_valid_duration():
    with pytest.raises(ValueError, match="max_epochs or max_time"):
        BudgetCosine(optimizer(), max_epochs=-1, max_time=None)
    with pytest.raises(ValueError, match="DD:HH:MM:SS"):
        duration_seconds("10:00")
    assert duration_seconds("01:02:03:04") == 93784.0
    assert duration_seconds(90) == 90.0
    assert duration_seconds(None) is None
