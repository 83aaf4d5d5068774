"""The collapse criteria: which units count as one fiber. The one list of their names.

* ``weights``: fibers of the weights (input-collapsed rows, cosine distance ≤ τ; exact at τ = 0),
  what ``demo.py --collapse`` and ``python -m pufferfiber collapse`` compute.

The sweep (``python -m pufferfiber sweep --criterion``) takes its choices from here; a new
criterion is one more name in :data:`CRITERIA` (and the option of the collapse step that
selects it).
"""

from __future__ import annotations

CRITERIA: tuple[str, ...] = ("weights",)
DEFAULT_CRITERION = "weights"


def check_criterion(name: str) -> str:
    """``name`` if it is a known criterion, else ``ValueError`` listing the valid ones."""
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; choose from {', '.join(CRITERIA)}")
    return name
