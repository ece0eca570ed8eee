"""Model errors on labelled data: predictions, error tables per file and ``config_type``, parity
plots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from torch_geometric.data import Batch

from mlip import keys
from mlip.data.graph import MIN_DISTANCE, atoms_to_graph
from mlip.data.records import LabelKeys
from mlip.errors import DataError, GeometryError, UnknownElementError, unknown_elements
from mlip.nn.potential import Potential

_TO_MILLI = 1000.0


@dataclass
class Predictions:
    """Reference labels and predictions of a set of frames (only frames carrying each label).

    ``energy_*``: per atom, eV/atom ``[F]``; ``forces_*``: components, eV/Å ``[M, 3]``;
    ``stress_*``: components, eV/Å³ ``[S, 6]`` (Voigt). ``*_group`` gives each row's
    ``config_type``, ``frame_group`` that of every frame and ``frame_atoms`` its number of atoms;
    ``left_out`` counts the frames without any label, which are in no row.
    """

    energy_ref: np.ndarray = field(default_factory=lambda: np.zeros(0))
    energy_pred: np.ndarray = field(default_factory=lambda: np.zeros(0))
    energy_group: list[str] = field(default_factory=list)
    forces_ref: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    forces_pred: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    forces_group: list[str] = field(default_factory=list)
    stress_ref: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))
    stress_pred: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))
    stress_group: list[str] = field(default_factory=list)
    frame_group: list[str] = field(default_factory=list)
    frame_atoms: list[int] = field(default_factory=list)
    left_out: int = 0

    def select(self, group: str) -> Predictions:
        """The rows of one ``config_type``."""
        out = Predictions()
        for name in ("energy", "forces", "stress"):
            mask = np.array([g == group for g in getattr(self, f"{name}_group")], dtype=bool)
            for part in ("ref", "pred"):
                setattr(out, f"{name}_{part}", getattr(self, f"{name}_{part}")[mask])
            setattr(out, f"{name}_group", [group] * int(mask.sum()))
        out.frame_group = [g for g in self.frame_group if g == group]
        out.frame_atoms = [
            n for g, n in zip(self.frame_group, self.frame_atoms, strict=True) if g == group
        ]
        return out

    def summary(self) -> str:
        """The frames compared and their atoms: ``"6 frames (1 without labels left out), 48
        atoms"``."""
        left_out = f" ({self.left_out} without labels left out)" if self.left_out else ""
        return f"{len(self.frame_group)} frames{left_out}, {sum(self.frame_atoms)} atoms"

    @property
    def groups(self) -> list[str]:
        """The ``config_type`` values present, sorted."""
        return sorted(set(self.frame_group))


def config_type(atoms: Atoms) -> str:
    return str(atoms.info.get("config_type", "-"))


def check_elements(frames: Sequence[Atoms], potential: Potential, where: str) -> None:
    """Raise :class:`UnknownElementError` naming ``where`` if a frame holds an unknown element."""
    found = {int(z) for atoms in frames for z in np.unique(atoms.numbers)}
    unknown = sorted(found - set(potential.species.tolist()))
    if unknown:
        raise UnknownElementError(f"{where}: {unknown_elements(unknown, potential.elements)}")


def is_labelled(atoms: Atoms) -> bool:
    """Whether a frame carries an energy, forces or stress to compare with."""
    results = atoms.calc.results if atoms.calc is not None else {}
    return any(name in results for name in ("energy", "forces", "stress"))


def check_labelled(frames: Sequence[Atoms], where: str, label_keys: LabelKeys) -> None:
    """Raise :class:`DataError` naming ``where`` (and the label names sought) if no frame carries
    an energy, forces or stress."""
    if not any(is_labelled(atoms) for atoms in frames):
        raise DataError(
            f"{where}: no frame has energy, forces or stress labels (looked for "
            f"{label_keys.energy!r}, {label_keys.forces!r}, {label_keys.stress!r})"
        )


def predict(
    potential: Potential,
    frames: Sequence[Atoms],
    batch_size: int = 16,
    min_distance: float = MIN_DISTANCE,
) -> Predictions:
    """Predictions of ``potential`` for the labelled ones of ``frames`` (as
    :mod:`mlip.data.readers` gives them; frames without labels are left out).

    A frame with two atoms closer than ``min_distance`` Å (or no graph) raises
    :class:`~mlip.errors.GeometryError` starting ``"frame k: "`` (its position in ``frames``).
    """
    device = potential.e0.device
    dtype = potential.e0.dtype
    numbered = [(k, atoms) for k, atoms in enumerate(frames) if is_labelled(atoms)]
    left_out = len(frames) - len(numbered)
    parts: dict[str, list] = {k: [] for k in ("e_ref", "e_pred", "e_g", "f_ref", "f_pred", "f_g")}
    parts.update({k: [] for k in ("s_ref", "s_pred", "s_g")})
    for start in range(0, len(numbered), batch_size):
        chunk = numbered[start : start + batch_size]
        graphs = []
        for k, atoms in chunk:
            try:
                graphs.append(atoms_to_graph(atoms, potential.cutoff, dtype, True, min_distance))
            except GeometryError as err:
                raise type(err)(f"frame {k}: {err}") from err
        batch = Batch.from_data_list(graphs).to(device)
        out = potential(batch, forces=True, stress=True, create_graph=False)
        energy = out[keys.ENERGY].detach().cpu().double().numpy()
        forces = out[keys.FORCES].detach().cpu().double().numpy()
        stress = out[keys.STRESS].detach().cpu().double().numpy()
        offsets = np.cumsum([0] + [len(a) for _, a in chunk])
        for k, (_, atoms) in enumerate(chunk):
            group, n, results = config_type(atoms), len(atoms), atoms.calc.results
            if "energy" in results:
                parts["e_ref"].append(results["energy"] / n)
                parts["e_pred"].append(energy[k] / n)
                parts["e_g"].append(group)
            if "forces" in results:
                parts["f_ref"].append(np.asarray(results["forces"]))
                parts["f_pred"].append(forces[offsets[k] : offsets[k + 1]])
                parts["f_g"] += [group] * n
            if "stress" in results and atoms.cell.rank == 3:
                parts["s_ref"].append(np.asarray(results["stress"]))
                s = stress[k]
                parts["s_pred"].append(s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]])
                parts["s_g"].append(group)
    return Predictions(
        energy_ref=np.array(parts["e_ref"], dtype=np.float64),
        energy_pred=np.array(parts["e_pred"], dtype=np.float64),
        energy_group=parts["e_g"],
        forces_ref=np.concatenate(parts["f_ref"]) if parts["f_ref"] else np.zeros((0, 3)),
        forces_pred=np.concatenate(parts["f_pred"]) if parts["f_pred"] else np.zeros((0, 3)),
        forces_group=parts["f_g"],
        stress_ref=np.array(parts["s_ref"], dtype=np.float64).reshape(-1, 6),
        stress_pred=np.array(parts["s_pred"], dtype=np.float64).reshape(-1, 6),
        stress_group=parts["s_g"],
        frame_group=[config_type(a) for _, a in numbered],
        frame_atoms=[len(a) for _, a in numbered],
        left_out=left_out,
    )


def errors(pred: Predictions) -> dict:
    """``{"frames": F, "energy": {"mae", "rmse", "count"}, "forces": ..., "stress": ...}``: MAE and
    RMSE of energy (meV/atom), forces and stress (per component; meV/Å, meV/Å³) with the number of
    values compared; labels absent from every frame are left out."""
    table: dict = {"frames": len(pred.frame_group)}
    for name in ("energy", "forces", "stress"):
        diff = (getattr(pred, f"{name}_pred") - getattr(pred, f"{name}_ref")).ravel() * _TO_MILLI
        if diff.size:
            table[name] = {
                "mae": float(np.abs(diff).mean()),
                "rmse": float(np.sqrt((diff**2).mean())),
                "count": int(diff.size),
            }
    return table


def format_table(rows: dict[str, dict]) -> str:
    """Rows ``{label: errors(...)}`` as an aligned text table with units in the header."""
    header = ["", "frames"]
    for name in keys.ERROR_UNITS:
        header += [f"{name} MAE", f"{name} RMSE"]
    units_row = ["", ""] + [f"[{u}]" for u in keys.ERROR_UNITS.values() for _ in range(2)]
    lines = [header, units_row]
    for label, row in rows.items():
        cells = [label, str(row.get("frames", ""))]
        for name in keys.ERROR_UNITS:
            err = row.get(name)
            cells += ["-", "-"] if err is None else [f"{err['mae']:.2f}", f"{err['rmse']:.2f}"]
        lines.append(cells)
    widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
    out = []
    for line in lines:
        first = line[0].ljust(widths[0])
        out.append(
            "  ".join([first] + [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)])
        )
    return "\n".join(out)


def parity_plots(pred: Predictions, prefix: str | os.PathLike, title: str = "") -> list[Path]:
    """PNG parity plots (prediction against reference, coloured by ``config_type``) of energy per
    atom and force components, and of stress where present: ``<prefix>_energy.png`` etc."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    quantities = [
        ("energy", "energy", "eV/atom", 1.0),
        ("forces", "force component", "eV/Å", 1.0),
        ("stress", "stress component", "GPa", 160.21766208),
    ]
    for name, label, unit, factor in quantities:
        ref = getattr(pred, f"{name}_ref")
        if ref.size == 0:
            continue
        predicted = getattr(pred, f"{name}_pred")
        groups = np.array(getattr(pred, f"{name}_group"))
        if name != "energy":  # one group label per row, one point per component
            groups = np.repeat(groups, ref.shape[1])
        ref, predicted = ref.ravel() * factor, predicted.ravel() * factor
        fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
        for group in sorted(set(groups.tolist())):
            mask = groups == group
            ax.scatter(ref[mask], predicted[mask], s=6, alpha=0.6, label=group, linewidths=0)
        low, high = float(min(ref.min(), predicted.min())), float(max(ref.max(), predicted.max()))
        pad = 0.03 * (high - low or 1.0)
        ax.plot([low - pad, high + pad], [low - pad, high + pad], "k-", lw=0.8)
        ax.set_xlim(low - pad, high + pad)
        ax.set_ylim(low - pad, high + pad)
        ax.set_aspect("equal")
        ax.set_xlabel(f"reference {label} ({unit})")
        ax.set_ylabel(f"predicted {label} ({unit})")
        mae = np.abs(predicted - ref).mean()
        rmse = np.sqrt(((predicted - ref) ** 2).mean())
        ax.set_title(f"{title}\nMAE {mae:.3g}, RMSE {rmse:.3g} {unit}".strip(), fontsize=9)
        if len(set(groups.tolist())) > 1:
            ax.legend(fontsize=7, markerscale=2, loc="upper left")
        fig.tight_layout()
        path = prefix.with_name(f"{prefix.name}_{name}.png")
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
