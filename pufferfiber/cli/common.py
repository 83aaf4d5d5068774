"""What every command line shares: one-line usage errors, the argparse that raises them, and
:func:`run_command`, the one place that turns bad input into ``PROG: error: ...`` and exit code 2
(Ctrl-C: 130)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pufferfiber.config.sections import ConfigError
from pufferfiber.envs.registry import EnvError
from pufferfiber.io.atomic import CheckpointError, describe_os_error
from pufferfiber.io.checkpoints import CHECKPOINT_FORMATS
from pufferfiber.io.fibersfile import FibersFileError
from pufferfiber.workflows.hooks import RunError
from pufferfiber.workflows.train import EXIT_INTERRUPTED, one_line, say

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad command-line usage (reported as one line)."""


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one-line :class:`UsageError` s (exit code 2, no usage
    block), like every other bad input."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def add_checkpoint_format_option(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint-format``, the same on every command that reads a checkpoint."""

    parser.add_argument(
        "--checkpoint-format",
        choices=CHECKPOINT_FORMATS,
        default="auto",
        help="format of the checkpoint read: pufferfiber (ours; PufferLib 2.0 pickles with "
        "--allow-pickle), pufferlib3 (PufferLib 3.0's plain state dict, read weights-only), "
        "or auto (told apart by content; default)",
    )


def run_command(
    prog: str, body: Callable[[], int], errors: tuple[type[Exception], ...] = ()
) -> int:
    """Run a command's ``body``; bad input of any kind (``errors``: the command's own error
    types) becomes ``PROG: error: ...`` (one line) and exit code 2, Ctrl-C exit code 130."""

    try:
        return body()
    except (UsageError, ConfigError, EnvError, CheckpointError, FibersFileError, RunError) as exc:
        say(f"{prog}: error: {one_line(exc)}")
    except errors as exc:
        say(f"{prog}: error: {one_line(exc)}")
    except OSError as exc:  # e.g. the dashboard's log copy on a full disk
        say(f"{prog}: error: {describe_os_error(Path(exc.filename or '?'), exc)}")
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_BAD_INPUT


def normalise_argv(argv: Sequence[str]) -> list[str]:
    """``--train.batch_size`` → ``--train.batch-size``: config keys take dashes or
    underscores, argparse knows the dashed form."""
    out = []
    for token in argv:
        name, eq, value = token.partition("=")
        if token.startswith("--") and "." in name:
            section, _, key = name[2:].partition(".")
            token = f"--{section}.{key.replace('_', '-')}{eq}{value}"
        out.append(token)
    return out
