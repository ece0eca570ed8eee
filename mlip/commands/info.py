"""``mlip info``: what a model file holds."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlip.errors import report_errors

PROG = "mlip info"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Show what a model file holds: architecture, elements, cutoff, parameter "
        "count, training data and errors.",
    )
    p.add_argument("model", nargs="?", help="model file (default: the bundled default model)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="all metadata (training config, statistics)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return report_errors(PROG, _run, parser().parse_args(argv))


def describe(path: Path) -> dict:
    """The contents of a model file as plain data (no weights)."""
    from ase.data import chemical_symbols

    from mlip.export import load_model, read_model_file

    payload = read_model_file(path)
    potential = load_model(path)
    parameters = sum(p.numel() for p in potential.parameters())
    species = [int(z) for z in payload["species"]]
    state = payload["state_dict"]
    e0 = state.get("e0")
    return {
        "file": str(path),
        "size_MB": round(path.stat().st_size / 1e6, 3),
        "format_version": payload["format_version"],
        "mlip_version": payload.get("mlip_version"),
        "model_class": payload["model_class"],
        "model_config": payload["model_config"],
        "parameters": parameters,
        "elements": [chemical_symbols[z] for z in species],
        "cutoff_A": payload["cutoff"],
        "dtype": payload["dtype"],
        "units": payload.get("units"),
        "e0_eV": None
        if e0 is None
        else dict(zip([chemical_symbols[z] for z in species], e0.tolist(), strict=True)),
        "metadata": payload.get("metadata") or {},
    }


def _run(args: argparse.Namespace) -> int:
    from mlip.models import model_file

    path = model_file(args.model)
    info = describe(path)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False, default=str))
        return 0
    config = ", ".join(f"{k}={v}" for k, v in info["model_config"].items())
    lines = [
        f"file          {info['file']} ({info['size_MB']} MB, model-file format "
        f"{info['format_version']}, written by mlip {info['mlip_version']})",
        f"architecture  {info['model_class']}({config})",
        f"parameters    {info['parameters']:,}",
        f"elements      {' '.join(info['elements'])}",
        f"cutoff        {info['cutoff_A']} Å",
        f"dtype         {info['dtype']}",
    ]
    if info["e0_eV"]:
        lines.append(
            "E0            " + ", ".join(f"{el} {v:.6f} eV" for el, v in info["e0_eV"].items())
        )
    metadata = info["metadata"]
    if not metadata:
        lines.append("metadata      (none: training data and errors not recorded)")
    elif args.verbose:
        lines.append("metadata")
        lines += _tree(metadata, indent="  ")
    else:
        lines += _summary(metadata)
    print("\n".join(lines))
    return 0


def _summary(metadata: dict) -> list[str]:
    """Training data and errors from the metadata that `mlip train` writes; other keys as a tree
    (the training config and data statistics only with --verbose)."""
    lines = []
    data = metadata.get("data")
    if isinstance(data, dict) and "train_files" in data:
        counts = ", ".join(
            f"{data[f'num_{split}_frames']} {split}"
            for split in ("train", "val", "test")
            if data.get(f"num_{split}_frames") is not None
        )
        lines.append(f"training data {', '.join(data['train_files'])} ({counts} frames)")
    errors = metadata.get("errors")
    if isinstance(errors, dict) and errors:
        lines.append("errors        MAE / RMSE")
        for split, values in errors.items():
            if not isinstance(values, dict):
                continue
            parts = []
            for name, unit in (("energy", "meV/atom"), ("forces", "meV/Å"), ("stress", "meV/Å³")):
                key = {"energy": "per_atom", "forces": "per_A", "stress": "per_A3"}[name]
                mae = values.get(f"{name}_mae_meV_{key}")
                rmse = values.get(f"{name}_rmse_meV_{key}")
                if mae is not None and rmse is not None:
                    parts.append(f"{name} {mae:.2f} / {rmse:.2f} {unit}")
            if parts:
                lines.append(f"  {split:<11} " + ", ".join(parts))
    tuned = metadata.get("finetune")
    if isinstance(tuned, dict) and "base_model" in tuned:
        lines += _chain(tuned)
    skip = {"data", "errors", "config", "statistics", "run_dir", "checkpoint", "finetune"}
    rest = {k: v for k, v in metadata.items() if k not in skip}
    if isinstance(data, dict) and "train_files" not in data:
        rest["data"] = data
    if rest:
        lines.append("metadata")
        lines += _tree(rest, indent="  ")
    return lines


def _chain(tuned: dict) -> list[str]:
    """The fine-tuning chain: base files (newest first), new elements, E0s, frozen, replay."""
    links = [tuned, *tuned.get("base_chain", [])]
    lines = []
    for depth, link in enumerate(links):
        new = ", ".join(link.get("new_elements") or []) or "none"
        lead = "fine-tuned    " if depth == 0 else "  itself      "
        lines.append(
            f"{lead}from {link.get('base_model')} (sha256 {str(link.get('base_sha256'))[:16]}), "
            f"new elements: {new}"
        )
    e0 = tuned.get("e0", {})
    if e0:
        lines.append(f"  E0          {e0.get('mode')} (base: {_values(e0.get('base_eV'))} eV)")
    frozen = tuned.get("frozen") or []
    lines.append(
        f"  frozen      {', '.join(tuned.get('freeze') or [])} ({len(frozen)} tensors)"
        if frozen
        else "  frozen      nothing"
    )
    replay = tuned.get("replay")
    if replay:
        kind = "pseudo-labelled by the base model" if replay.get("pseudo") else "given"
        lines.append(
            f"  replay      {', '.join(replay.get('files', []))} ({kind}; ratio "
            f"{replay.get('ratio')}, weight {replay.get('weight')})"
        )
    else:
        lines.append("  replay      none")
    return lines


def _values(by_element) -> str:
    return ", ".join(f"{el} {v:.4f}" for el, v in (by_element or {}).items())


def _tree(value, indent: str) -> list[str]:
    """Nested metadata as indented ``key: value`` lines."""
    lines = []
    for key, item in value.items():
        if isinstance(item, dict) and item:
            lines.append(f"{indent}{key}:")
            lines += _tree(item, indent + "  ")
        else:
            text = json.dumps(item, ensure_ascii=False, default=str)
            if isinstance(item, float):
                text = f"{item:.6g}"
            elif isinstance(item, str):
                text = item
            lines.append(f"{indent}{key}: {text}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
