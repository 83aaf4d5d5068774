"""The choices of the compression core, one list each, and the one check of a fiber threshold
and of a size target.

The configuration (``pufferfiber.config``) and the command lines take their choice lists from
here, so a choice is added in one place. :data:`RNN_KINDS` is also ``core.policy``'s (derived
there from the torch modules; a test checks that they agree).
"""

from __future__ import annotations

import math
from typing import Any

CRITERIA = ("weights", "data")  # how fibers are found (core.criteria)
FLATTEN_COLOURS = ("positions", "pooled")  # colours at the conv -> Linear boundary
LSTM_CRITERIA = ("units", "published")  # the weight criterion's LSTM part
DATA_FITS = ("lstsq", "affine")  # how the data criterion rebuilds a removed unit
DATA_PIVOTS = ("consumer", "variance")  # how its least-squares fit picks the next kept unit
RNN_KINDS = ("lstm", "gru")
MAX_THRESHOLD = 2.0  # cosine distances lie in [0, 2]


def validate_threshold(tau: Any, what: str = "threshold") -> float:
    """τ as a float in ``[0, 2]`` (cosine distances lie there); ``ValueError`` with a clear
    message otherwise. The one check of a fiber threshold."""
    try:
        value = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number between 0 and 2, got {tau!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= MAX_THRESHOLD:
        raise ValueError(f"{what} must be between 0 and 2 (cosine distance), got {tau}")
    return value


def validate_target(target: Any, what: str = "target") -> float:
    """The target as a float in ``(0, 1]``; ``ValueError`` with a one-line message otherwise.
    The one check of a size target."""
    try:
        value = float(target)
    except (TypeError, ValueError):
        raise ValueError(
            f"{what} must be a fraction of the parameters in (0, 1], got {target!r}"
        ) from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{what} must be a fraction of the parameters in (0, 1], got {target}")
    return value
