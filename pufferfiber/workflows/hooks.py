"""The training hooks a run's settings switch on: symmetry breaking (``[break]``) and ReDo
(``[redo]``), built and checked in one place for the command line and the sweep."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pufferfiber.config.sections import BreakConfig, RedoConfig, RunConfig, parse_layers


class RunError(ValueError):
    """A run cannot be started or continued as asked (a one-line message for the user)."""


def check_hooks(hooks: Sequence[Any], policy: Any) -> None:
    """Let hooks with a ``check(policy)`` method validate their settings before any training."""
    for hook in hooks:
        if hasattr(hook, "check"):
            try:
                hook.check(policy)
            except ValueError as exc:
                raise RunError(str(exc)) from None


def training_hooks(cfg: RunConfig, given: dict[str, str] | None = None) -> list[Any]:
    """Per-epoch hooks of the run's settings: symmetry breaking (``[break] enabled``) and ReDo
    (``[redo] enabled``). ``given``: the settings on this command line; ``--break.*`` without
    breaking (``--redo.*`` without ReDo) is an error."""
    for section, switch, what in (
        ("break", cfg.breaking.enabled, "--break-symmetry (symmetry breaking is off)"),
        ("redo", cfg.redo.enabled, "--redo (ReDo is off)"),
    ):
        stray = sorted(
            k for k in given or {} if k.startswith(f"{section}.") and k != f"{section}.enabled"
        )
        if stray and not switch:
            raise RunError(f"--{stray[0].replace('_', '-')} needs {what}")
    return hooks_from(cfg.breaking, cfg.redo, cfg.train.seed)


def hooks_from(breaking: BreakConfig, redo: RedoConfig, seed: int) -> list[Any]:
    """The hooks that ``breaking`` and ``redo`` switch on (:class:`RunError` for a bad value)."""
    from pufferfiber.rl.breaking import SymmetryBreaker
    from pufferfiber.rl.redo import DormantReset

    b, r = breaking, redo
    hooks: list[Any] = []
    try:
        if b.enabled:
            hooks.append(
                SymmetryBreaker(
                    interval=b.interval,
                    fiber_threshold=b.fiber_threshold,
                    opfiber_threshold=b.opfiber_threshold,
                    maturity=b.maturity,
                    fraction=b.fraction,
                    layers=parse_layers(b.layers),
                    seed=seed,
                )
            )
    except ValueError as exc:
        raise RunError(str(exc)) from None
    try:
        if r.enabled:
            layers = parse_layers(r.layers)
            hooks.append(DormantReset(tau=r.tau, interval=r.interval, layers=layers, seed=seed))
    except ValueError as exc:
        raise RunError(f"--redo: {exc}") from None
    return hooks
