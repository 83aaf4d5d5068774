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

# Public name -> the module that defines it. The compression names (core) need torch, numpy
# and scipy only; the run names (io, rl, workflows) load the training stack when first used.
_EXPORTS = {
    # your own module
    "adapt": "pufferfiber.core.adapt",
    "AdaptedNetwork": "pufferfiber.core.adapt",
    "AdaptError": "pufferfiber.core.adapt",
    # criteria: which units form fibers, and the quotient
    "CRITERIA": "pufferfiber.core.criteria",
    "FiberCriterion": "pufferfiber.core.criteria",
    "WeightCriterion": "pufferfiber.core.criteria",
    "DataCriterion": "pufferfiber.core.criteria",
    "make_criterion": "pufferfiber.core.criteria",
    # the pieces beneath them
    "Architecture": "pufferfiber.core.policy",
    "Policy": "pufferfiber.core.policy",
    "build_graph": "pufferfiber.core.graph",
    "Fibration": "pufferfiber.core.colouring",
    "compute_fibers": "pufferfiber.core.fibers",
    "compute_opfibers": "pufferfiber.core.fibers",
    "collapse_policy": "pufferfiber.core.collapse",
    # fidelity
    "Divergence": "pufferfiber.core.divergence",
    "output_divergence": "pufferfiber.core.divergence",
    # files and runs
    "Checkpoint": "pufferfiber.io.checkpoints",
    "load_checkpoint": "pufferfiber.io.checkpoints",
    "save_checkpoint": "pufferfiber.io.checkpoints",
    "load_fibers": "pufferfiber.io.fibersfile",
    "save_fibers": "pufferfiber.io.fibersfile",
    "collect_observations": "pufferfiber.rl.evaluate",
    "play_episodes": "pufferfiber.rl.evaluate",
    "collapse_to_folder": "pufferfiber.workflows.collapse",
    "FidelitySpec": "pufferfiber.workflows.collapse",
    "WriteMode": "pufferfiber.workflows.collapse",
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
