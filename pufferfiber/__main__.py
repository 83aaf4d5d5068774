"""``python -m pufferfiber COMMAND``: the same as the ``pufferfiber`` command (see
:mod:`pufferfiber.cli`)."""

from pufferfiber.cli import console_main

raise SystemExit(console_main())
