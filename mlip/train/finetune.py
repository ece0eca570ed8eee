"""Fine-tuning: a training run that starts from a model file (``mlip train finetune_from=PATH``).

The base file gives the architecture, the weights, the cutoff, the dtype, the mean neighbour count
and the output scale (what defines its function); the new data gives the E0s (refitted, or kept with
``finetune.e0=keep``) and any element the base lacks, which :func:`grow` appends to every
per-element table. The ``finetune`` config node (:class:`FineTune`) holds the rest: frozen modules,
the learning rate and warm-up, and replay against forgetting (wired in
:mod:`mlip.train.runner`). What was done goes into the model file's metadata under ``"finetune"``
(``mlip info`` shows the chain of base files).
"""

from __future__ import annotations

import fnmatch
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from ase.data import chemical_symbols
from omegaconf import DictConfig, OmegaConf

from mlip.errors import ConfigError
from mlip.export import MODEL_CLASSES, build_potential, load_model, read_model_file, sha256
from mlip.nn.potential import Potential

E0_MODES = ("refit", "keep")


class FineTune:
    """How a run starts from its base model file (the ``finetune`` node; read only when
    ``finetune_from`` is set).

    Args:
        e0: ``"refit"``: E0s from the new data (different DFT settings shift the references;
            a base element the data lacks keeps its E0); ``"keep"``: the base model's E0s, with
            those of new elements fitted to the data around them.
        freeze: module name patterns (``fnmatch``, or a dotted prefix: ``embedding``,
            ``convolutions.0``) of the energy model whose weights stay fixed; the rows of new
            elements in a frozen per-element table still train.
        lr: learning rate (replaces ``optim.optimizer.lr`` unless that is given on the command
            line).
        warmup_steps: optimiser steps over which the learning rate rises linearly from
            ``lr / warmup_steps`` to ``lr`` (0: none).
        replay: None; file(s) of frames from the base model's domain mixed into every epoch; or
            ``"pseudo"``: ``pseudo_structures`` labelled by the base model before training.
        replay_ratio: replay frames per new training frame in each epoch.
        replay_weight: loss weight of a replay frame (a new frame's is its own, default 1).
        replay_val_fraction: fraction of the replay frames held out to validate on.
        pseudo_structures: structure file(s) of the base model's domain (``replay=pseudo``).
        pseudo_copies: rattled (and, periodic, strained) copies labelled per structure.
        pseudo_rattle: standard deviation of the rattle, Å.
        pseudo_strain: largest strain component of the copies.
    """

    def __init__(
        self,
        e0: str = "refit",
        freeze: Sequence[str] = (),
        lr: float = 5e-3,
        warmup_steps: int = 20,
        replay: str | Sequence[str] | None = None,
        replay_ratio: float = 0.5,
        replay_weight: float = 1.0,
        replay_val_fraction: float = 0.1,
        pseudo_structures: str | Sequence[str] | None = None,
        pseudo_copies: int = 4,
        pseudo_rattle: float = 0.03,
        pseudo_strain: float = 0.02,
    ) -> None:
        problems = []
        if e0 not in E0_MODES:
            problems.append(f"finetune.e0={e0!r}: choose refit or keep")
        for name, value in (
            ("lr", lr),
            ("replay_ratio", replay_ratio),
            ("replay_weight", replay_weight),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                problems.append(f"finetune.{name}={value!r}: a positive number")
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
            problems.append(f"finetune.warmup_steps={warmup_steps!r}: an integer >= 0")
        if replay == "pseudo" and not pseudo_structures:
            problems.append(
                "finetune.replay=pseudo needs finetune.pseudo_structures: structure file(s) of the "
                "base model's domain to label with it"
            )
        if problems:
            raise ConfigError("bad fine-tuning setting: " + "; ".join(problems))
        self.e0 = e0
        self.freeze = [str(p) for p in freeze]
        self.lr = float(lr)
        self.warmup_steps = int(warmup_steps)
        self.replay = _paths(replay) if replay != "pseudo" else "pseudo"
        self.replay_ratio = float(replay_ratio)
        self.replay_weight = float(replay_weight)
        self.replay_val_fraction = float(replay_val_fraction)
        self.pseudo_structures = _paths(pseudo_structures)
        self.pseudo_copies = int(pseudo_copies)
        self.pseudo_rattle = float(pseudo_rattle)
        self.pseudo_strain = float(pseudo_strain)


def base_model_file(value: str | os.PathLike) -> Path:
    """The file ``finetune_from`` names (a bundled model's name, e.g. ``"default"``, or a path)."""
    from mlip.models import model_file

    return model_file(value)


def prepare(cfg: DictConfig, overrides: Sequence[str]) -> tuple[Path, Potential]:
    """Read the base model of ``cfg.finetune_from`` and make ``cfg`` agree with it, in place.

    A ``model`` override (``overrides``: the command line's ``KEY=VALUE`` strings) that changes
    the base architecture is refused with :class:`ConfigError` naming the key. ``cutoff`` and
    ``dtype`` become the base model's unless given on the command line (then a warning says the
    start differs); ``optim.optimizer.lr`` becomes ``finetune.lr`` unless given, and
    ``module.warmup_steps`` ``finetune.warmup_steps``; ``model`` becomes the base model's
    constructor config (so the recorded config says what trains). Returns the file and its
    potential.
    """
    path = base_model_file(cfg.finetune_from)
    if not path.is_file():
        raise ConfigError(
            f"finetune_from={cfg.finetune_from}: no such model file ({path.resolve()})"
        )
    payload = read_model_file(path)
    given = {_key(o) for o in overrides}
    base_config = payload["model_config"]
    for key in sorted(given):
        if key == "model":
            raise ConfigError(
                f"model=...: a fine-tuning run takes its model from {path} (a "
                f"{payload['model_class']}); leave out the model group"
            )
        if key.startswith("model."):
            name = key.removeprefix("model.")
            value = OmegaConf.to_container(cfg.model, resolve=True).get(name)
            if name not in base_config or value != base_config[name]:
                raise ConfigError(
                    f"{key}={value}: the architecture comes from the base model {path} "
                    f"({name}={base_config.get(name)}); fine-tuning cannot change it (train "
                    "without finetune_from for another architecture)"
                )
    finetune: FineTune = _finetune(cfg)
    for key, base_value in (("cutoff", payload["cutoff"]), ("dtype", payload["dtype"])):
        if key not in given:
            cfg[key] = base_value
        elif cfg[key] != base_value:
            what = (
                "its radial functions are stretched to the new cutoff, so the run does not start "
                "from the base model's energies"
                if key == "cutoff"
                else "its weights are cast"
            )
            warnings.warn(
                f"{key}={cfg[key]} overrides the base model's {key} {base_value} ({path}): {what}",
                stacklevel=2,
            )
    target = f"{MODEL_CLASSES[payload['model_class']]}.{payload['model_class']}"
    config = {**base_config, "r_max": float(cfg.cutoff)} if "r_max" in base_config else base_config
    cfg.model = {"_target_": target, **config}  # what the run trains, in its recorded config
    if "optim.optimizer.lr" not in given:
        cfg.optim.optimizer.lr = finetune.lr
    if "module.warmup_steps" not in given:
        cfg.module.warmup_steps = finetune.warmup_steps
    base = load_model(path, dtype=cfg.dtype)
    if abs(base.cutoff - float(cfg.cutoff)) > 1e-12:
        base = _with_cutoff(base, float(cfg.cutoff))
    return path, base


def start(
    base: Potential,
    base_file: Path,
    finetune: FineTune,
    data_species: Sequence[int],
    data_e0: Mapping[int, float],
    fit_e0,
) -> tuple[Potential, dict]:
    """The potential a fine-tuning run starts from, and its ``"finetune"`` metadata.

    ``data_species``, ``data_e0`` (eV by atomic number): the new data's elements and fitted E0s;
    ``fit_e0(fixed) -> {Z: eV}`` fits the E0s of the data's elements not in ``fixed`` with those
    held (``finetune.e0=keep``).
    """
    base_species = base.species.tolist()
    added = [z for z in sorted(set(data_species)) if z not in base_species]
    potential = grow(base, base_species + added)
    base_e0 = dict(zip(base_species, base.e0.tolist(), strict=True))
    if finetune.e0 == "keep":
        e0 = dict(base_e0) | {z: e for z, e in fit_e0(base_e0).items() if z in added}
    else:
        e0 = dict(base_e0) | {z: float(e) for z, e in data_e0.items()}
    species = potential.species.tolist()
    with torch.no_grad():
        potential.e0.copy_(
            torch.tensor([e0.get(z, 0.0) for z in species], dtype=potential.e0.dtype)
        )
    potential.train()
    frozen = freeze(potential, finetune.freeze, len(base_species))
    info = {
        "base_model": str(base_file.resolve()),
        "base_sha256": sha256(base_file),
        "base_elements": [chemical_symbols[z] for z in base_species],
        "new_elements": [chemical_symbols[z] for z in added],
        "base_chain": _chain(getattr(base, "metadata", {}) or {}),
        "e0": {
            "mode": finetune.e0,
            "base_eV": _by_symbol(base_e0),
            "data_eV": _by_symbol(data_e0),
            "used_eV": _by_symbol(dict(zip(species, potential.e0.tolist(), strict=True))),
        },
        "kept_from_base": {
            "avg_num_neighbors": potential.model.config.get("avg_num_neighbors"),
            "scale_eV": potential.scale.tolist(),
            "cutoff_A": potential.cutoff,
        },
        "frozen": frozen,
        "freeze": list(finetune.freeze),
        "lr": finetune.lr,
        "warmup_steps": finetune.warmup_steps,
    }
    return potential, info


def grow(base: Potential, species: Sequence[int]) -> Potential:
    """``base`` knowing ``species`` (which must start with ``base``'s own, in order).

    Every per-element table (the species embedding, per-element grid MLPs or product weights,
    E0, scale and shift) gets a row for each new element, set to the mean of the base elements'
    rows: a new element starts as the average base element (its E0 is set by the caller). The
    base elements' rows are copied, so a structure of base elements has the base model's energy
    exactly. A table is recognised by its shape alone (the one dimension that grows with the
    number of elements).
    """
    old = base.species.tolist()
    species = [int(z) for z in species]
    if species[: len(old)] != old:
        raise ValueError(f"species {species} must start with the base model's {old}")
    if len(species) == len(old):
        return base
    model = base.model
    config = dict(model.config, num_species=len(species))
    dtype = str(base.e0.dtype).removeprefix("torch.")
    grown = build_potential(type(model).__name__, config, base.cutoff, species, dtype)
    grown = grown.to(base.e0.device)
    fresh = grown.state_dict()
    state = {}
    for key, value in base.state_dict().items():
        target = fresh[key]
        if key in ("species", "species_index") or value.shape == target.shape:
            state[key] = target if key in ("species", "species_index") else value
            continue
        dims = [d for d in range(value.dim()) if value.shape[d] != target.shape[d]]
        if len(dims) != 1 or value.shape[dims[0]] != len(old):
            raise ValueError(
                f"cannot grow {key} from {tuple(value.shape)} to {tuple(target.shape)}"
            )
        dim = dims[0]
        shape = list(value.shape)
        shape[dim] = len(species) - len(old)
        mean = value.mean(dim=dim, keepdim=True).expand(shape)
        state[key] = torch.cat([value, mean], dim=dim)
    grown.load_state_dict(state)
    grown.metadata = getattr(base, "metadata", {})
    return grown.train(base.training)


def freeze(potential: Potential, patterns: Sequence[str], num_base_species: int) -> list[str]:
    """Fix the energy model's parameters whose names match ``patterns``; returns their names.

    A pattern matches a dotted name exactly, as a prefix of whole parts (``convolutions.0``
    matches ``convolutions.0.radial.weight``) or as an ``fnmatch`` pattern. A pattern matching
    nothing raises :class:`ConfigError`. In a frozen per-element table (first dimension the
    number of elements) only the rows of the first ``num_base_species`` elements are fixed: their
    gradients are zeroed, so the new elements' rows train.
    """
    model = potential.model
    num_species = potential.species.shape[0]
    names = dict(model.named_parameters())
    frozen = []
    for pattern in patterns:
        hits = [
            n
            for n in names
            if n == pattern or n.startswith(pattern + ".") or fnmatch.fnmatch(n, pattern)
        ]
        if not hits:
            tops = sorted({n.split(".")[0] for n in names})
            raise ConfigError(
                f"finetune.freeze={pattern!r} matches no parameter of the {type(model).__name__} "
                f"(its modules: {', '.join(tops)})"
            )
        frozen += [n for n in hits if n not in frozen]
    for name in frozen:
        parameter = names[name]
        if num_species > num_base_species and parameter.shape[:1] == (num_species,):
            parameter.register_hook(_zero_rows(num_base_species))
        else:
            parameter.requires_grad_(False)
    return frozen


def check_frozen_rows(potential: Potential, frozen: Sequence[str], weight_decay: float) -> None:
    """Refuse weight decay with partly frozen tables: AdamW would shrink their fixed rows."""
    partial = [n for n in frozen if dict(potential.model.named_parameters())[n].requires_grad]
    if partial and weight_decay:
        raise ConfigError(
            f"finetune.freeze fixes the base elements' rows of {partial[0]} while new elements "
            f"train, and weight_decay={weight_decay} would still shrink them: set "
            "optim.optimizer.weight_decay=0"
        )


def _zero_rows(rows: int):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:rows] = 0
        return grad

    return hook


def _chain(metadata: Mapping) -> list[dict]:
    """The base model's own chain of base files (oldest last), from its metadata."""
    info = metadata.get("finetune")
    if not isinstance(info, Mapping):
        return []
    link = {k: info.get(k) for k in ("base_model", "base_sha256", "new_elements")}
    return [link, *info.get("base_chain", [])]


def _with_cutoff(base: Potential, cutoff: float) -> Potential:
    """``base`` with its weights in a model built for another cutoff (Å)."""
    config = (
        dict(base.model.config, r_max=cutoff) if "r_max" in base.model.config else base.model.config
    )
    dtype = str(base.e0.dtype).removeprefix("torch.")
    moved = build_potential(type(base.model).__name__, config, cutoff, base.species.tolist(), dtype)
    moved.load_state_dict(base.state_dict())
    moved.metadata = getattr(base, "metadata", {})
    return moved.eval()


def _by_symbol(values: Mapping[int, float]) -> dict[str, float]:
    return {chemical_symbols[int(z)]: float(e) for z, e in sorted(values.items())}


def _key(override: str) -> str:
    """``"model.channels"`` of ``"model.channels=[8,4]"`` (also ``+key=``, ``++key=``, ``~key``)."""
    return override.split("=", 1)[0].lstrip("+~")


def _finetune(cfg: DictConfig) -> FineTune:
    from hydra.utils import instantiate

    return instantiate(cfg.finetune, _convert_="all")


def _paths(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | os.PathLike):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value]


__all__ = [
    "E0_MODES",
    "FineTune",
    "base_model_file",
    "freeze",
    "grow",
    "prepare",
    "sha256",
    "start",
]
