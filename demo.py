"""The guide's entry point: ``python demo.py --mode train --env beam_rider`` (see --help)."""

from pufferfiber.cli import main

raise SystemExit(main())
