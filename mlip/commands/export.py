"""``mlip export RUN_DIR``: write the model file of a training run from its checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlip.errors import OutputError
from mlip.export import load_checkpoint, potential_from_checkpoint, save_model
from mlip.outputs import writable_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlip export",
        description="Write RUN_DIR/model.pt (EMA weights) from a training checkpoint; "
        "no Hydra config or data is needed.",
    )
    parser.add_argument("run_dir", type=Path, help="run directory of `mlip train`")
    parser.add_argument(
        "--checkpoint",
        default="best",
        help="best (default; falls back to last), last, or a path to a .ckpt file",
    )
    parser.add_argument(
        "--output", type=Path, help="model file to write (default RUN_DIR/model.pt)"
    )
    parser.add_argument("--raw", action="store_true", help="export the raw weights, not the EMA")
    args = parser.parse_args(argv)

    try:
        output = writable_file(args.output or args.run_dir / "model.pt", "--output")
    except OutputError as err:
        print(f"mlip export: error: {err}", file=sys.stderr)
        return 2
    ckpt_dir = args.run_dir / "checkpoints"
    if args.checkpoint in ("best", "last"):
        candidates = [ckpt_dir / f"{args.checkpoint}.ckpt", ckpt_dir / "last.ckpt"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            print(f"mlip export: error: no checkpoint in {ckpt_dir}", file=sys.stderr)
            return 2
    else:
        path = Path(args.checkpoint)
    try:
        checkpoint = load_checkpoint(path)
        potential = potential_from_checkpoint(checkpoint, ema=not args.raw)
    except Exception as err:  # corrupt file, foreign checkpoint
        print(f"mlip export: error: {path}: cannot read the checkpoint: {err}", file=sys.stderr)
        return 2
    info = checkpoint["mlip"]
    metadata = dict(info.get("metadata", {}))
    metadata.update(
        {
            "errors": info.get("metrics", {}),
            "epochs": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
            "checkpoint": str(path.resolve()),
            "weights": "raw" if args.raw else "ema",
        }
    )
    output = save_model(potential, output, metadata=metadata)
    print(f"mlip export: wrote {output} from {path} (epoch {checkpoint.get('epoch')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
