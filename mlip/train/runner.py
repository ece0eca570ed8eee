"""One training run from a composed config: data -> statistics -> model -> fit -> test -> model file.

:func:`train` is what ``mlip train`` runs; :func:`compose` builds the same config from Python
(``compose(["trainer.max_epochs=2"])``) for scripts and tests.

Run directory layout (``cfg.run_dir``)::

    .hydra/               the composed config and overrides (written by ``mlip train``)
    .lock                 held by the live run (a second process on the directory is refused)
    checkpoints/last.ckpt every epoch; the run resumes from it
    checkpoints/best.ckpt lowest validation loss
    logs/version_<k>/     CSV metrics, one version per (re)start
    wandb/                with logger=wandb
    model.pt              the exported model (EMA weights of the best epoch)
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from mlip import keys
from mlip.data.datamodule import DataModule
from mlip.errors import ConfigError, TrainingInterrupted, TrainingTerminated
from mlip.export import load_checkpoint, remove_partial_checkpoints, save_model
from mlip.nn.config import default_dtype
from mlip.nn.potential import Potential
from mlip.train import CONF_DIR, finetune
from mlip.train.checkpoint import AtomicCheckpointIO
from mlip.train.mixing import add_replay
from mlip.train.module import PotentialModule
from mlip.train.replay import pseudo_label, replay_set
from mlip.train.rundir import is_first_process, locked_run_dir, record_config

"""What ``cfg.data`` builds: frames in memory, or streamed from LMDB (``data=lmdb``)."""


@dataclass
class TrainResult:
    """What a run produced (on processes other than rank 0, ``model_path`` is None)."""

    run_dir: Path
    model_path: Path | None
    module: PotentialModule
    datamodule: DataModule
    trainer: pl.Trainer
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The config ``mlip train <overrides>`` would run (without the ``hydra`` node)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def check_config(cfg: DictConfig) -> None:
    """Refuse config values that would only fail after the data is read (a traceback then)."""
    problems = []
    if cfg.dtype not in ("float32", "float64"):
        problems.append(f"dtype={cfg.dtype!r}: choose float32 or float64")
    if not isinstance(cfg.cutoff, int | float) or not cfg.cutoff > 0:
        problems.append(f"cutoff={cfg.cutoff!r}: a positive number of Å")
    for key in ("seed", "num_threads", "trainer.max_epochs", "trainer.num_nodes"):
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, int):
            problems.append(f"{key}={value!r}: an integer")
    max_time = OmegaConf.select(cfg, "trainer.max_time")
    if max_time is not None and not (
        isinstance(max_time, str) and re.fullmatch(r"\d+:\d+:\d+:\d+", max_time)
    ):
        problems.append(f"trainer.max_time={max_time!r}: DD:HH:MM:SS or null")
    if problems:
        raise ConfigError("bad config value: " + "; ".join(problems))


def checkpoint_to_resume(run_dir: Path, resume: str | bool) -> Path | None:
    """``run_dir/checkpoints/last.ckpt`` if the run should continue from it, else None.

    ``resume``: ``"auto"`` continues when the file exists, ``True`` requires it, ``False`` starts
    over (the directory's old checkpoints are overwritten as the new run proceeds).
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume in (False, "false", "False"):
        return None
    if resume in (True, "true", "True"):
        if not last.is_file():
            raise FileNotFoundError(f"resume=true but there is no checkpoint {last} to resume from")
        return last
    if resume != "auto":
        raise ValueError(f"resume must be auto, true or false, got {resume!r}")
    return last if last.is_file() else None


def build_potential(cfg: DictConfig, datamodule: DataModule) -> Potential:
    """The model of ``cfg.model`` inside a :class:`Potential`, with the data's statistics."""
    stats = datamodule.statistics
    with default_dtype(cfg.dtype):
        model = instantiate(
            cfg.model,
            num_species=len(stats.species),
            avg_num_neighbors=stats.avg_num_neighbors,
            _convert_="all",
        )
        r_max = getattr(model, "config", {}).get("r_max", cfg.cutoff)
        if abs(float(r_max) - float(cfg.cutoff)) > 1e-9:
            raise ValueError(f"model r_max {r_max} differs from cutoff {cfg.cutoff}")
        return Potential(
            model, cfg.cutoff, stats.species, e0=stats.e0, scale=stats.scale, shift=stats.shift
        )


def train(cfg: DictConfig, overrides: Sequence[str] | None = None) -> TrainResult:
    """Train, test and export as ``cfg`` says; returns the trained module and the model path.

    ``overrides``: the ``KEY=VALUE`` strings ``cfg`` was composed with (default: Hydra's, inside
    ``mlip train``; else none). A fine-tuning run (``finetune_from``) needs them to tell the
    settings given from those it takes from the base model file.

    Raises :class:`~mlip.errors.RunDirectoryInUse` if another live process trains in
    ``cfg.run_dir``, :class:`TrainingTerminated` on SIGTERM and :class:`TrainingInterrupted` on
    SIGINT (Ctrl+C) while fitting or testing.
    """
    check_config(cfg)  # before the lock and .hydra/: a bad value leaves the directory alone
    base = None
    if cfg.get("finetune_from"):
        base = finetune.prepare(cfg, _command_overrides() if overrides is None else overrides)
    run_dir = Path(cfg.run_dir)
    if not is_first_process():
        return _train(cfg, run_dir, base)
    with locked_run_dir(run_dir):
        record_config(cfg, run_dir)
        return _train(cfg, run_dir, base)


def _command_overrides() -> list[str]:
    """The overrides of the running Hydra app (``mlip train``), or none outside one."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _train(cfg: DictConfig, run_dir: Path, base: tuple[Path, Potential] | None) -> TrainResult:
    started = time.perf_counter()
    ckpt_dir = run_dir / "checkpoints"
    if rank_zero_only.rank == 0:
        remove_partial_checkpoints(ckpt_dir)
        remove_partial_checkpoints(run_dir)  # a model file killed mid-write
    resume_from = checkpoint_to_resume(run_dir, cfg.resume)
    resumed_at = None  # (epoch, global step) of resume_from; an unreadable one stops here
    if resume_from is not None:
        info = load_checkpoint(resume_from)
        resumed_at = (info.get("epoch"), info.get("global_step"))
        del info  # Lightning reads it again in fit; do not hold it through data loading
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule: DataModule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")  # reads and checks every file before anything trains
    metadata = {"statistics": datamodule.statistics.as_dict(), "run_dir": str(run_dir.resolve())}
    if base is None:
        potential = build_potential(cfg, datamodule)
    else:
        potential, metadata["finetune"] = _start_finetune(cfg, run_dir, base, datamodule)
    metadata["data"] = datamodule.describe()
    plain = OmegaConf.to_container(cfg, resolve=True)
    module = instantiate(cfg.module, _partial_=True, _convert_="all")(
        potential=potential,
        loss=instantiate(cfg.loss, _convert_="all"),
        optimizer=instantiate(cfg.optim.optimizer, _convert_="all"),
        scheduler=instantiate(cfg.optim.scheduler, _convert_="all")
        if cfg.optim.scheduler
        else None,
        metadata=metadata,
        config=plain,
    )
    has_val = datamodule.has("val")
    # two callbacks: with save_last on the monitored one, Lightning 2.6 rewrites last.ckpt only
    # when the monitored loss improves, and a kill then loses every epoch since
    shared = dict(
        dirpath=ckpt_dir,
        save_top_k=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    callbacks = [ModelCheckpoint(filename="last", monitor=None, **shared)]
    if has_val:
        callbacks.insert(
            0, ModelCheckpoint(filename="best", monitor="val/loss", mode="min", **shared)
        )
    if OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True):
        callbacks.append(
            TQDMProgressBar()
        )  # not Rich's, which Lightning takes when rich is installed
    loggers = [instantiate(node, _convert_="all") for node in (cfg.logger or {}).values()]
    trainer: pl.Trainer = instantiate(cfg.trainer, _partial_=True, _convert_="all")(
        default_root_dir=run_dir,
        logger=loggers,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        inference_mode=False,  # forces need autograd during validation and test
    )
    _report_start(cfg, datamodule, potential, resume_from, resumed_at, metadata.get("finetune"))

    with _signals_end_the_run(ckpt_dir / "last.ckpt"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)

    best = ckpt_dir / "best.ckpt"
    if has_val and best.is_file():
        best_state = load_checkpoint(best)
        module.load_state_dict(best_state["state_dict"])
        module.last_metrics = dict(best_state.get("mlip", {}).get("metrics", {}))
    metrics = {k: dict(v) for k, v in module.last_metrics.items()}
    if datamodule.has("test"):
        with _signals_end_the_run(ckpt_dir / "last.ckpt"):
            trainer.test(module, datamodule=datamodule, verbose=False)
        metrics["test"] = dict(module.last_metrics.get("test", {}))

    model_path = None
    if trainer.is_global_zero:
        metadata.update(
            {
                "data": datamodule.describe(),  # now with the bad frames the loaders skipped
                "errors": metrics,
                "epochs": trainer.current_epoch,
                "global_step": trainer.global_step,
                "nonfinite_steps": module.nonfinite_steps,
                "weights": "ema of best epoch" if module.ema is not None else "best epoch",
                "config": plain,
            }
        )
        model_path = save_model(module.eval_potential, run_dir / "model.pt", metadata=metadata)
        _report_end(model_path, metrics, datamodule, time.perf_counter() - started)
    _finish(loggers)
    return TrainResult(run_dir, model_path, module, datamodule, trainer, metrics)


def _start_finetune(
    cfg: DictConfig, run_dir: Path, base: tuple[Path, Potential], datamodule: DataModule
) -> tuple[Potential, dict]:
    """The base potential grown to the data's elements, with its E0s, frozen modules and replay
    as ``cfg.finetune`` says, and the ``"finetune"`` metadata."""
    path, base_potential = base
    settings: finetune.FineTune = instantiate(cfg.finetune, _convert_="all")
    stats = datamodule.statistics
    held = datamodule.isolated_e0
    potential, info = finetune.start(
        base_potential,
        path,
        settings,
        stats.species,
        dict(zip(stats.species, stats.e0, strict=True)),
        lambda fixed: datamodule.statistics_pass.fit_e0({**held, **fixed}),
    )
    weight_decay = OmegaConf.select(cfg, "optim.optimizer.weight_decay") or 0.0
    finetune.check_frozen_rows(potential, info["frozen"], weight_decay)
    if settings.replay:
        files = settings.replay
        if files == "pseudo":
            out = run_dir / "replay_pseudo.extxyz"
            pseudo_label(
                base_potential, settings.pseudo_structures, out, settings.pseudo_copies,
                settings.pseudo_rattle, settings.pseudo_strain, cfg.seed,
                progress=datamodule.progress,
            )  # fmt: skip
            files = [str(out)]
        replay = replay_set(
            files, cfg.cutoff, potential.species.tolist(), settings.replay_weight,
            settings.replay_val_fraction, cfg.seed, dtype=datamodule.dtype,
            label_keys=None if settings.replay == "pseudo" else datamodule.label_keys,
            progress=datamodule.progress, min_distance=datamodule.min_distance,
        )  # fmt: skip
        add_replay(datamodule, replay, settings.replay_ratio, cfg.seed)
        info["replay"] = {
            "files": [str(Path(f).resolve()) for f in files],
            "pseudo": settings.replay == "pseudo",
            "pseudo_structures": settings.pseudo_structures,
            "ratio": settings.replay_ratio,
            "weight": settings.replay_weight,
            "num_train_frames": len(replay.train),
            "num_val_frames": len(replay.val),
        }
    return potential, info


@contextmanager
def _signals_end_the_run(last: Path) -> Iterator[None]:
    """SIGTERM and SIGINT inside ``trainer.fit`` or ``trainer.test`` as :class:`TrainingTerminated`
    and :class:`TrainingInterrupted`, whose message says what ``last`` holds."""
    try:
        yield
    except SIGTERMException:
        raise TrainingTerminated(_stopped("terminated by SIGTERM", last)) from None
    except SystemExit as exit_:
        # Lightning answers Ctrl+C with its graceful shutdown and then sys.exit(1)
        if not isinstance(exit_.__context__, KeyboardInterrupt):
            raise
        raise TrainingInterrupted(_stopped("interrupted by SIGINT", last)) from None


def _stopped(how: str, last: Path) -> str:
    done = f"after epoch {load_checkpoint(last).get('epoch')}" if last.is_file() else "nothing"
    return f"{how}; {last} holds {done}: rerun the same command to continue from it"


def _finish(loggers: list) -> None:
    """Close Weights & Biases runs (Lightning leaves them open; offline files are then complete)."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        wandb.finish()


@rank_zero_only
def _report_start(
    cfg: DictConfig,
    datamodule: DataModule,
    potential: Potential,
    resume_from: Path | None,
    resumed_at: tuple[int, int] | None,
    tuned: dict | None = None,
) -> None:
    stats = datamodule.statistics
    described = datamodule.describe()
    e0 = ", ".join(f"{el} {e:.4f}" for el, e in stats.as_dict()["e0_by_element"].items())
    params = sum(p.numel() for p in potential.parameters())
    print(
        f"mlip train: run directory {Path(cfg.run_dir).resolve()}\n"
        f"  data: {described['num_train_frames']} train / {described['num_val_frames']} val / "
        f"{described['num_test_frames']} test frames from {', '.join(described['train_files'])}\n"
        f"  E0 ({stats.e0_source}): {e0} eV; mean neighbours {stats.avg_num_neighbors:.2f} "
        f"within {cfg.cutoff} Å; force RMS (scale) {stats.scale:.4f} eV/Å\n"
        f"  model: {type(potential.model).__name__}, {params} parameters, {cfg.dtype}",
        flush=True,
    )
    if tuned is not None:
        _report_finetune(tuned)
    _report_bad(described)
    if resume_from is not None:
        epoch, step = resumed_at
        print(
            f"  resuming from {resume_from} (after epoch {epoch}, global step {step})", flush=True
        )


def _report_finetune(tuned: dict) -> None:
    """What a fine-tuning run took from its base model and what it changed."""
    kept = tuned["kept_from_base"]
    e0 = tuned["e0"]
    new = ", ".join(tuned["new_elements"]) or "none"
    used = ", ".join(f"{el} {v:.4f}" for el, v in e0["used_eV"].items())
    lines = [
        f"  fine-tuning {tuned['base_model']} (sha256 {tuned['base_sha256'][:12]}): elements "
        f"{' '.join(tuned['base_elements'])}, new {new}",
        f"    kept from the base: cutoff {kept['cutoff_A']} Å, mean neighbours "
        f"{kept['avg_num_neighbors']:.2f}, scale {', '.join(f'{v:.4f}' for v in kept['scale_eV'])} eV",
        f"    E0 ({e0['mode']}): {used} eV; learning rate {tuned['lr']:g}, warm-up "
        f"{tuned['warmup_steps']} steps",
    ]
    if tuned["frozen"]:
        lines.append(f"    frozen ({len(tuned['frozen'])} tensors): {', '.join(tuned['freeze'])}")
    replay = tuned.get("replay")
    if replay:
        lines.append(
            f"    replay: {replay['num_train_frames']} train / {replay['num_val_frames']} val frames "
            f"({'pseudo-labelled by the base, ' if replay['pseudo'] else ''}ratio "
            f"{replay['ratio']:g}, weight {replay['weight']:g}) from {', '.join(replay['files'])}"
        )
    print("\n".join(lines), flush=True)


def _report_bad(described: dict) -> None:
    """One line per bad frame the data module left out (``data.on_error=skip``), the first few."""
    count, named = described.get("num_bad_frames", 0), described.get("bad_frames", [])
    if count:
        shown = "".join(f"\n    {message}" for message in named)
        more = f"\n    ... and {count - len(named)} more" if count > len(named) else ""
        print(f"  skipped {count} bad frame(s) (data.on_error=skip):{shown}{more}", flush=True)


def _report_end(
    model_path: Path, metrics: dict[str, dict[str, float]], datamodule, seconds: float
) -> None:
    stage = "test" if metrics.get("test") else "val"
    errors = metrics.get(stage, {})
    lines = [f"mlip train: done in {seconds:.0f} s."]
    if errors:
        frames = datamodule.describe()[f"num_{stage}_frames"]
        lines.append(
            f"{stage.capitalize()} errors ({frames} frames, EMA weights of the best epoch):"
        )
        for name, unit in keys.ERROR_UNITS.items():
            spelt = keys.metric_unit(name)
            mae, rmse = errors.get(f"{name}_mae_{spelt}"), errors.get(f"{name}_rmse_{spelt}")
            if mae is not None:
                lines.append(f"  {name:<7} MAE {mae:9.2f}  RMSE {rmse:9.2f}  {unit}")
    loaded = datamodule.describe().get("num_bad_frames_loaded")
    if loaded:
        lines.append(f"  {loaded} bad frame(s) skipped while loading (see train.log)")
    path = model_path.resolve()
    lines += [
        f"Model file: {path}",
        f"  relax a structure:  mlip relax --model {path} structure.cif",
        f"  in Python:          mlip.load_model('{path}')  (an mlip.Potential)",
    ]
    print("\n".join(lines), flush=True)


__all__ = [
    "CONF_DIR",
    "TrainResult",
    "TrainingInterrupted",
    "TrainingTerminated",
    "build_potential",
    "checkpoint_to_resume",
    "compose",
    "train",
]
