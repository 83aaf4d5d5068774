"""``python -m pufferfiber.cli.job FILE``: run the :class:`~pufferfiber.workflows.job.TrainJob`
saved in ``FILE`` (the sweep's child process for each run), with the command line's one-line
errors and exit codes."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from pufferfiber.cli.common import UsageError, run_command
from pufferfiber.workflows.job import TrainJob, run_job


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)

    def body() -> int:
        if len(argv) != 1:
            raise UsageError("usage: python -m pufferfiber.cli.job JOB.json")
        try:
            job = TrainJob.load(Path(argv[0]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{argv[0]}: not a training job ({exc})") from None
        return run_job(job)

    return run_command("job", body)


if __name__ == "__main__":
    sys.exit(main())
