"""pufferfiber: train PufferLib agents and compress them with symmetry fibrations.

The library's public names are reached from here (``import pufferfiber as pf``; ``pf.adapt``,
``pf.WeightCriterion``, ...). They are loaded on first use (PEP 562), so ``import pufferfiber``
imports no torch and the command line's ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

# torch imports the deprecated `pynvml` that pufferlib 2.0.2 pins; its notice on every start
# would only clutter users' log.err.
warnings.filterwarnings("ignore", message="The pynvml package is deprecated")

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "adapt": "pufferfiber.core.adapt",
    "AdaptedNetwork": "pufferfiber.core.adapt",
    "AdaptError": "pufferfiber.core.adapt",
    "WeightCriterion": "pufferfiber.core.criteria",
    "DataCriterion": "pufferfiber.core.criteria",
    "FiberCriterion": "pufferfiber.core.criteria",
    "make_criterion": "pufferfiber.core.criteria",
    "output_divergence": "pufferfiber.core.divergence",
    "Divergence": "pufferfiber.core.divergence",
    "Fibration": "pufferfiber.core.fibers",
    "Architecture": "pufferfiber.core.policy",
    "Policy": "pufferfiber.core.policy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pufferfiber' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
