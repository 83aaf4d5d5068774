"""``python -m pufferfiber COMMAND``: the same as the ``pufferfiber`` command (see
:mod:`pufferfiber.cli.main`)."""

from pufferfiber.cli.main import console_main

raise SystemExit(console_main())
