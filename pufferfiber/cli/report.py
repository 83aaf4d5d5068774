"""``pufferfiber report``: its options and entry point (the work is
:func:`pufferfiber.experiments.report.write_report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pufferfiber.cli.common import Parser, run_command


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m pufferfiber report",
        description=(
            "Plot an experiment: episode return of the original run and of every collapsed, "
            "resumed run (with the collapsed model's parameter count, in % of the full model, "
            "on a second axis), fibers per layer over time, and with several thresholds "
            "parameters vs return vs KL per threshold."
        ),
    )
    p.add_argument(
        "experiment_dir", type=Path, metavar="EXPERIMENT_DIR",
        help="the original run's folder, experiments/<env>-<id8> (a folder of runs: the newest "
             "run in it); its collapsed_model_thr_TT_EEEEEE/ folders are found automatically. "
             "A sweep folder (summary.csv) is aggregated over seeds instead (default output "
             "SWEEP_DIR/report.html)",
    )  # fmt: skip
    p.add_argument(
        "-o", "--output", type=Path, metavar="FILE",
        help="FILE.png (all figures in one image) or FILE.html (figures embedded + a table of "
             "the numbers); for a sweep also FILE.md (its sentences and tables in Markdown, "
             "the figures in FILE.png beside it); default EXPERIMENT_DIR/report.png",
    )  # fmt: skip
    p.add_argument(
        "--smooth", type=int, default=5, metavar="N",
        help="moving-average window (epochs) for the return curves and final returns (default 5)",
    )  # fmt: skip
    p.add_argument(
        "--flatten-colours", choices=("positions", "pooled"), default=None,
        help="conv→Linear colouring for fibers over time (default: the one each collapse used)",
    )  # fmt: skip
    p.add_argument(
        "--no-fibers", action="store_true",
        help="skip computing fibers over time (faster; sizes come from fibers.pkl only)",
    )  # fmt: skip
    p.add_argument(
        "--allow-pickle", action="store_true",
        help="read PufferLib 2.0 whole-module pickled checkpoints for fibers over time (this "
             "runs code from the files: only for checkpoints you trust)",
    )  # fmt: skip
    p.add_argument("--dpi", type=int, default=100, help="image resolution (default 100)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no table")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pufferfiber report``; returns the exit code (bad input: one line, 2)."""
    from pufferfiber.experiments.report import ReportError

    return run_command(
        "report", lambda: _report(build_parser().parse_args(argv)), errors=(ReportError,)
    )


def _report(args: argparse.Namespace) -> int:
    """A sweep folder gets the seeds aggregated; anything else is an experiment or run folder."""
    from pufferfiber.experiments.report import write_report
    from pufferfiber.experiments.sweep_report import is_sweep_dir, write_sweep_report

    if is_sweep_dir(args.experiment_dir):
        return write_sweep_report(args)
    return write_report(args)


if __name__ == "__main__":
    raise SystemExit(main())
