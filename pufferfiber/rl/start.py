"""Where a training run starts (:class:`RunStart`), kept free of torch so the command line can
name it without loading the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pufferfiber.io.runfiles import LOG


@dataclass(frozen=True)
class RunStart:
    """Where training starts: a new run by default, or a resumed / collapsed one.

    ``epoch`` and ``global_step`` are those already trained; training runs to ``end_epoch``
    (``None``: the schedule's end). ``optimizer_state``: Adam's moments to continue with (a
    collapsed network starts with fresh ones). ``log_name``: the dashboard's copy in the run
    folder (``log.out``, or ``log_collapsed.out`` after a collapse). ``meta``: what every
    checkpoint of the run records besides its weights (e.g. the collapse it came from).
    """

    epoch: int = 0
    global_step: int = 0
    end_epoch: int | None = None
    optimizer_state: dict[str, Any] | None = field(default=None, repr=False)
    log_name: str = LOG
    meta: dict[str, Any] = field(default_factory=dict)


NEW_RUN = RunStart()  # epoch 0, the schedule's end, fresh optimizer
