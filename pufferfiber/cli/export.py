"""``pufferfiber export``: its options and entry point (the work, export plus parity check, is
:func:`pufferfiber.workflows.export.export_checkpoint`). Bad input of any kind: one line on
stderr and exit code 2."""

from __future__ import annotations

import argparse
from pathlib import Path

from pufferfiber.cli.common import Parser, run_command
from pufferfiber.workflows.export import FORMATS, TOLERANCE, ExportError, export_checkpoint


def build_parser() -> argparse.ArgumentParser:

    p = Parser(
        prog="pufferfiber export",
        description=(
            "Export a checkpoint (collapsed or not) to PufferLib's C runtime (puffernet: "
            "weights.bin, a policy.c generated for this policy's widths, README.txt with the "
            "build command) or to TorchScript (policy.pt, loadable with plain torch). The "
            "folder is written only after held-out observation sequences (LSTM state carried "
            f"from zero) give logits and value within {TOLERANCE:g} of the PyTorch policy and "
            "equal greedy actions."
        ),
    )
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a pufferfiber checkpoint")
    p.add_argument("--format", required=True, metavar="FORMAT", help=f"one of {', '.join(FORMATS)}")
    p.add_argument(
        "--out", required=True, type=Path, metavar="DIR",
        help="the export folder (new, or an earlier export, which is replaced)",
    )  # fmt: skip
    p.add_argument(
        "--sequences", type=int, default=4, metavar="N",
        help="held-out sequences of the parity check (default 4)",
    )  # fmt: skip
    p.add_argument(
        "--steps", type=int, default=256, metavar="T",
        help="steps per held-out sequence (default 256)",
    )  # fmt: skip
    p.add_argument(
        "--seed", type=int, default=777,
        help="seed of the held-out play, one training never uses (default 777)",
    )  # fmt: skip
    p.add_argument(
        "--allow-pickle", action="store_true",
        help="import a PufferLib 2.0 whole-module checkpoint (this runs code from the file: "
             "only for checkpoints you trust)",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pufferfiber export``; returns the exit code (bad input: one line, 2)."""

    return run_command("export", lambda: _export(argv), errors=(ExportError,))


def _export(argv: list[str] | None) -> int:

    args = build_parser().parse_args(argv)
    if args.format not in FORMATS:  # checked before the checkpoint is read
        raise ExportError(f"unknown --format {args.format!r} (choose {', '.join(FORMATS)})")
    result = export_checkpoint(
        args.checkpoint,
        args.format,
        args.out,
        sequences=args.sequences,
        steps=args.steps,
        seed=args.seed,
        allow_pickle=args.allow_pickle,
    )
    print(f"exported {result.parameters} parameters as {result.format} to {result.out}")
    print(f"  files: {', '.join(result.files)}")
    print(f"  parity: {result.parity.line()}")
    if result.build_command:
        print(f"  build: {result.build_command}")
    if result.game_command:
        print(f"  game:  {result.game_command}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
