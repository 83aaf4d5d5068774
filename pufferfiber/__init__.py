"""pufferfiber: train PufferLib agents and compress them with symmetry fibrations."""

__version__ = "0.1.0"
