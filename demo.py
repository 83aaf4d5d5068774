"""The guide's entry point: ``python demo.py --mode train --env beam_rider`` (see --help).

The same as ``pufferfiber train|eval``; the package must be importable (``make setup``
installs it into ``.venv``; from the repository root it is found as it is).
"""

from pufferfiber.cli.main import main

raise SystemExit(main())
