"""LightningModule: trains a :class:`~mlip.nn.potential.Potential` on energies, forces and stress.

Optimisation is manual (one optimiser step per batch) so that the NaN guard can skip a step on every
process at once: a non-finite loss or gradient skips the step and is counted, and
``max_nonfinite`` consecutive ones stop the run with :class:`NonFiniteLossError` (the last
checkpoint, written before, stays). In data-parallel runs the loss of each process is normalised by
the global batch's label count, so gradients equal those of one process on the whole batch.
Validation, test and export use the EMA weights. Validation loader 0 is the new data's
(``val/<metric>``, ``val/loss`` picks the best checkpoint); loader 1, where the data module has one,
is the replay set's (``val_replay/<metric>``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from mlip import keys
from mlip.errors import NonFiniteLossError
from mlip.nn.potential import Potential
from mlip.train.ema import ExponentialMovingAverage
from mlip.train.loss import WeightedLoss
from mlip.train.metrics import ErrorSums
from mlip.train.schedules import BudgetCosine

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[[Optimizer], LRScheduler | ReduceLROnPlateau]
VAL_STAGES = ("val", "val_replay")
"""The metric prefix of each validation loader: the new data's, then the replay set's."""


class PotentialModule(pl.LightningModule):
    """Training of a potential: weighted losses, metrics, EMA, optimiser and NaN guard.

    Args:
        potential: the potential to train (built with the data statistics).
        loss: the weighted loss.
        optimizer: ``optimizer(params) -> Optimizer`` (a Hydra ``_partial_`` node).
        scheduler: ``scheduler(optimizer) -> scheduler``, stepped once per epoch; a
            ``ReduceLROnPlateau`` is stepped on ``val/loss`` (train loss without validation).
        ema_decay: decay of the exponential moving average of the weights; None disables it.
        gradient_clip: maximum gradient norm; None disables clipping.
        max_nonfinite: consecutive skipped steps (non-finite loss or gradient) that stop the run.
        warmup_steps: the learning rate of the first steps is scaled by ``(step + 1) /
            warmup_steps`` (fine-tuning; 0: no warm-up); the scheduler's rate is unchanged.
        metadata: plain JSON-able dict stored in checkpoints and the model file (data, statistics).
        config: plain dict of the whole run configuration, saved as hyperparameters (logged).
    """

    def __init__(
        self,
        potential: Potential,
        loss: WeightedLoss,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        ema_decay: float | None = 0.99,
        gradient_clip: float | None = 10.0,
        max_nonfinite: int = 10,
        warmup_steps: int = 0,
        metadata: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.potential = potential
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.ema = ExponentialMovingAverage(potential, ema_decay) if ema_decay else None
        self.gradient_clip = gradient_clip
        self.max_nonfinite = int(max_nonfinite)
        self.warmup_steps = int(warmup_steps)
        self.metadata = dict(metadata or {})
        self.nonfinite_steps = 0
        self.consecutive_nonfinite = 0
        self.epoch_steps = {"taken": 0, "skipped": 0}
        self.epoch_losses: dict[str, Tensor] = {}  # loss name -> sum over structures this epoch
        self.epoch_structures = 0
        self.errors = {stage: ErrorSums() for stage in (*VAL_STAGES, "test")}
        self.last_metrics: dict[str, dict[str, float]] = {}
        if config is not None:
            self.save_hyperparameters(config)

    @property
    def eval_potential(self) -> Potential:
        """The potential used for validation, testing and export (the EMA copy if any)."""
        return self.ema.module if self.ema is not None else self.potential

    # -- optimisation ---------------------------------------------------------------------------

    def configure_optimizers(self):
        params = [p for p in self.potential.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    def _sum_over_processes(self, value: Tensor) -> Tensor:
        if self.trainer.world_size == 1:
            return value
        return self.trainer.strategy.reduce(value, reduce_op="sum")

    def _predict(self, potential: Potential, batch, training: bool) -> dict[str, Tensor]:
        stress = self.loss_fn.wants_stress() and bool(batch[keys.HAS_STRESS].any())
        with torch.enable_grad():
            return potential(batch, forces=True, stress=stress, create_graph=training)

    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        optimizer = self.optimizers()
        pred = self._predict(self.potential, batch, training=True)
        terms = self.loss_fn.terms(pred, batch)
        # normalise by the global batch: DDP averages gradients over processes
        names = list(terms)
        counts = torch.stack([terms[n][1] for n in names]).detach()
        global_sums = self._sum_over_processes(counts) / self.trainer.world_size
        loss = self.loss_fn.combine(terms, dict(zip(names, global_sums, strict=True)))
        if self.trainer.world_size > 1:
            # every parameter takes part in the graph, so DDP sees no unused parameters
            loss = loss + sum(0.0 * p.sum() for p in self.potential.parameters() if p.requires_grad)

        if not self._finite_everywhere(loss.detach()):
            return self._skip_step(batch_idx, "loss")
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.gradient_clip:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.gradient_clip, gradient_clip_algorithm="norm"
            )
        grads = [p.grad for p in self.potential.parameters() if p.grad is not None]
        if not self._finite_everywhere(torch.nn.utils.get_total_norm(grads)):
            optimizer.zero_grad()
            return self._skip_step(batch_idx, "gradient")
        self._step(optimizer)
        self.consecutive_nonfinite = 0
        self.epoch_steps["taken"] += 1
        if self.ema is not None:
            self.ema.update(self.potential)

        # epoch means weighted by structures, summed here and logged once an epoch (a self.log
        # call per step and term was a measurable share of a small model's step); the step loss
        # is logged at the logger's cadence (trainer.log_every_n_steps)
        size = batch[keys.ENERGY].shape[0]
        means = {"loss": loss.detach()}
        means.update({n: (v / c.clamp(min=1e-12)).detach() for n, (v, c) in terms.items()})
        for name, mean in means.items():
            self.epoch_losses[name] = self.epoch_losses.get(name, 0.0) + mean * size
        self.epoch_structures += size
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", means["loss"], prog_bar=True, on_step=True, on_epoch=False)
        return loss.detach()

    def _step(self, optimizer) -> None:
        """One optimiser step, at a learning rate scaled down while warming up."""
        factor = min(1.0, (self.global_step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if factor == 1.0:
            optimizer.step()
            return
        rates = [group["lr"] for group in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = lr * factor
        optimizer.step()
        for group, lr in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = lr

    def _finite_everywhere(self, value: Tensor) -> bool:
        """Whether ``value`` is finite on every process (all processes get the same answer)."""
        bad = (~torch.isfinite(value)).to(torch.float32).reshape(1)
        return float(self._sum_over_processes(bad).item()) == 0.0

    def _skip_step(self, batch_idx: int, what: str) -> None:
        self.nonfinite_steps += 1
        self.consecutive_nonfinite += 1
        self.epoch_steps["skipped"] += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), on_step=True, on_epoch=False)
        if self.consecutive_nonfinite >= self.max_nonfinite:
            raise NonFiniteLossError(
                f"{self.consecutive_nonfinite} consecutive training steps had a non-finite {what} "
                f"(epoch {self.current_epoch}, batch {batch_idx}; {self.nonfinite_steps} skipped in "
                f"all): stopping. {self._checkpoint_note()} Lower the learning rate "
                "(optim.optimizer.lr) or check the data."
            )
        return None

    def _checkpoint_note(self) -> str:
        """Where the run can be continued from, for the message of a stopped run."""
        last = Path(self.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        if last.is_file():
            return f"{last} (the last finished epoch) is intact: rerun to continue from it."
        return "No epoch had finished, so there is no checkpoint."

    def on_train_epoch_start(self) -> None:
        self.epoch_steps = {"taken": 0, "skipped": 0}
        self.epoch_losses, self.epoch_structures = {}, 0

    def _epoch_loss_means(self) -> dict[str, float]:
        """This epoch's training losses, ``train/loss_epoch`` and ``train/loss_<term>``: means
        over its structures (of this process)."""
        count = self.epoch_structures
        if not count:
            return {}
        named = {"loss": "train/loss_epoch"}
        return {
            named.get(k, f"train/loss_{k}"): float(v) / count for k, v in self.epoch_losses.items()
        }

    def on_train_epoch_end(self) -> None:
        if self.epoch_steps["skipped"] and not self.epoch_steps["taken"]:
            raise NonFiniteLossError(
                f"epoch {self.current_epoch}: all {self.epoch_steps['skipped']} training steps had "
                "a non-finite loss or gradient, so nothing was trained: stopping. "
                f"{self._checkpoint_note()} Check the data (`mlip data check`) or lower the "
                "learning rate (optim.optimizer.lr)."
            )
        optimizer = self.optimizers()
        train_losses = self._epoch_loss_means()
        for name, value in train_losses.items():
            self.log(name, value, on_step=False, on_epoch=True, prog_bar=name == "train/loss_epoch")
        self.log("lr", optimizer.param_groups[0]["lr"], on_step=False, on_epoch=True)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            if isinstance(scheduler, ReduceLROnPlateau):
                value = self.trainer.callback_metrics.get(
                    "val/loss", train_losses.get("train/loss_epoch")
                )
                if value is not None:
                    scheduler.step(float(value))
            else:
                if isinstance(scheduler, BudgetCosine) and self.trainer.world_size > 1:
                    # one clock for all processes, so that they all take the same learning rate
                    scheduler.set_elapsed(self.trainer.strategy.broadcast(scheduler.elapsed(), 0))
                scheduler.step()

    # -- evaluation -----------------------------------------------------------------------------

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        pred = self._predict(self.eval_potential, batch, training=False)
        self.errors[VAL_STAGES[dataloader_idx]].update(pred, batch, self.loss_fn)

    def test_step(self, batch, batch_idx: int) -> None:
        pred = self._predict(self.eval_potential, batch, training=False)
        self.errors["test"].update(pred, batch, self.loss_fn)

    def on_validation_epoch_start(self) -> None:
        for stage in VAL_STAGES:
            self.errors[stage].reset()

    def on_test_epoch_start(self) -> None:
        self.errors["test"].reset()

    def on_validation_epoch_end(self) -> None:
        for stage in VAL_STAGES:
            self._log_errors(stage)

    def on_test_epoch_end(self) -> None:
        self._log_errors("test")

    def _log_errors(self, stage: str) -> None:
        metrics = self.errors[stage].compute(self.loss_fn, self._sum_over_processes)
        self.errors[stage].reset()
        if self.trainer.sanity_checking or not metrics:
            return
        self.last_metrics[stage] = metrics
        for name, value in metrics.items():
            bar = name == "loss" or "rmse" in name and not name.startswith("stress")
            self.log(f"{stage}/{name}", value, prog_bar=bar and stage == "val", sync_dist=False)

    # -- checkpoints ----------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds a plain ``"mlip"`` entry: what rebuilds the potential without Hydra."""
        potential = self.potential
        checkpoint["mlip"] = {
            "model_class": type(potential.model).__name__,
            "model_config": potential.model.config,
            "cutoff": potential.cutoff,
            "species": potential.species.tolist(),
            "dtype": str(potential.e0.dtype).removeprefix("torch."),
            "metadata": self.metadata,
            "metrics": self.last_metrics,
            "nonfinite_steps": self.nonfinite_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("mlip", {})
        self.nonfinite_steps = int(info.get("nonfinite_steps", 0))
        self.last_metrics = dict(info.get("metrics", {}))


__all__ = ["NonFiniteLossError", "PotentialModule"]
