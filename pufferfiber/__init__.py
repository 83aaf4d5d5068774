"""pufferfiber: train PufferLib agents and compress them with symmetry fibrations."""

import warnings

# torch imports the deprecated `pynvml` that pufferlib 2.0.2 pins; its notice on every start
# would only clutter users' log.err.
warnings.filterwarnings("ignore", message="The pynvml package is deprecated")

__version__ = "0.1.0"
