"""``python -m pufferfiber {collapse,report,sweep}``: the package's command-line tools.

Training lives in ``demo.py`` (the guide's entry point); this dispatcher adds the
standalone tools. Each subcommand's ``--help`` explains its options.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE = """usage: python -m pufferfiber COMMAND [options]

commands:
  collapse   find the fibers of a checkpoint, write the collapsed model, fibers.pkl, fidelity.json
  report     plot original vs collapsed training of an experiment folder (PNG or HTML), or
             aggregate the seeds of a sweep folder
  sweep      the guide's protocol over env x threshold x criterion x seed, on Ray Tune

Run 'python -m pufferfiber COMMAND --help' for a command's options.
Training and the guide's workflow: 'python demo.py --help'."""


def _command(name: str) -> Callable[[list[str]], int] | None:
    if name == "collapse":
        from pufferfiber.pipeline import collapse_main

        return collapse_main
    if name == "report":
        from pufferfiber.report import main

        return main
    if name == "sweep":
        from pufferfiber.sweep import main as sweep_main

        return sweep_main
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command = _command(argv[0])
    if command is None:
        print(
            f"error: unknown command {argv[0]!r} (choose collapse, report or sweep)",
            file=sys.stderr,
        )
        return 2
    return command(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
