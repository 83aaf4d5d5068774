"""Size targets: how many units each layer keeps so the collapsed policy has a given size.

A *target* ``F`` (``0 < F <= 1``) is a fraction of the full policy's parameters (heads and
biases included). Both criteria reach it with an exact budget, not a search over τ:

* **The split across layers.** Every collapsible layer that is still open keeps the same
  fraction ``r`` of its units, ``k_l = max(1, round(r · n_l))``; ``r`` is the one for which the
  policy of widths ``k_l`` (counted by :meth:`Architecture.parameter_count`) is nearest to
  ``F`` times the full count (a bisection on ``r``: the count grows with ``r``). The
  convolutions are shrunk only when the Linear and recurrent layers cannot reach the target
  alone (one unit each): they hold few parameters, and the information every later layer
  reads (on BeamRider at 20 %, halving the channels too gave 70× the held-out KL). Layers not
  selected (``layers=``) keep all their units and count in full.
* **Layer by layer.** Layers are collapsed in forward order and the split is planned again
  before each one, with the layers already collapsed at the sizes they got. A layer that ends
  below its share (the data criterion finds more of it exactly redundant; the weight
  criterion's dendrogram has tied merges, so fewer fibers than asked) leaves its parameters to
  the layers after it, and the last layer absorbs what is left.
* **The criteria.** The data criterion keeps units in its greedy order until the layer's count
  is reached (:func:`pufferfiber.core.datafibers.select_units` with ``count``); the weight
  criterion cuts the layer's average-linkage dendrogram at that many clusters (``maxclust``).
  The τ a target corresponds to is recorded: per layer the data criterion's largest relative
  fit error of a removed unit, or the weight criterion's height of the cut; overall the
  largest of them (``Fibration.threshold``).

Widths are whole units, so the size moves in steps; when no split comes within
:data:`TARGET_TOLERANCE` of the target (tiny layers, a target below one unit per layer, fibers
that jump), the nearest achievable size is kept and :func:`budget_note` says why in one line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pufferfiber.core.graph import Kind, LayerGraph
from pufferfiber.core.types import validate_target

__all__ = [
    "TARGET_TOLERANCE",
    "Budget",
    "budget_note",
    "budget_record",
    "check_threshold_or_target",
    "next_width",
    "plan_widths",
    "smallest_fraction",
    "validate_target",
]

TARGET_TOLERANCE = 0.01  # the achieved fraction lies within ±1 percentage point of the target
_BISECTIONS = 40


def check_threshold_or_target(threshold: float | None, target: float | None) -> None:
    """Exactly one of τ and a size target: ``ValueError`` (one line) otherwise."""
    if threshold is not None and target is not None:
        raise ValueError("give either a threshold (τ) or a size target, not both")
    if threshold is None and target is None:
        raise ValueError("give a threshold (τ) or a size target")


@dataclass(frozen=True)
class Budget:
    """Planned widths: ``sizes`` (every hidden layer, by name), the parameters they give and
    the full count."""

    target: float
    sizes: dict[str, int]
    params: int
    params_full: int

    @property
    def fraction(self) -> float:
        return self.params / self.params_full


def _count(graph: LayerGraph, arch: Any, sizes: Mapping[str, int]) -> int:
    return int(graph.resized(arch, sizes).parameter_count())


def plan_widths(
    graph: LayerGraph,
    arch: Any,
    target: float,
    *,
    open_layers: Sequence[str],
    fixed: Mapping[str, int] | None = None,
    params_full: int | None = None,
) -> Budget:
    """The widths that bring the policy of ``graph``/``arch`` nearest to ``target`` of
    ``params_full`` (default: the count of ``arch`` itself).

    ``open_layers`` (names) are resized by one common fraction, the convolutions among them
    only when the others cannot reach the target alone (see the module docstring); ``fixed``
    layers have the given sizes; every other hidden layer keeps its current size.
    """
    target = validate_target(target)
    fixed = dict(fixed or {})
    full = int(params_full if params_full is not None else arch.parameter_count())
    budget = target * full
    current = {n.name: n.size for n in graph.hidden}
    base = {**current, **fixed}
    opened = [name for name in open_layers if name not in fixed]
    dense = [name for name in opened if graph[name].kind != Kind.CONV]
    alone = {**base, **dict.fromkeys(dense, 1)}  # the smallest size without the convolutions
    if dense and len(dense) < len(opened) and _count(graph, arch, alone) <= budget:
        opened = dense  # reachable without them: the convolutions keep every channel

    def widths(r: float) -> dict[str, int]:
        return {**base, **{n: max(1, min(current[n], round(r * current[n]))) for n in opened}}

    lo, hi = 0.0, 1.0  # count(widths(lo)) <= budget (or lo is the smallest), count(hi) > it
    if _count(graph, arch, widths(1.0)) <= budget or not opened:
        best = widths(1.0)
    else:
        for _ in range(_BISECTIONS):
            mid = 0.5 * (lo + hi)
            if _count(graph, arch, widths(mid)) <= budget:
                lo = mid
            else:
                hi = mid
        below, above = widths(lo), widths(hi)
        nb, na = _count(graph, arch, below), _count(graph, arch, above)
        best = below if abs(nb - budget) <= abs(na - budget) else above
    params = _count(graph, arch, best)
    return Budget(target, best, params, full)


def smallest_fraction(graph: LayerGraph, arch: Any, open_layers: Sequence[str], full: int) -> float:
    """The size with one unit in each of ``open_layers`` (the others whole), as a fraction."""
    return _count(graph, arch, dict.fromkeys(open_layers, 1)) / full


def budget_note(
    target: float, achieved: float, smallest: float, jumped: str | None = None
) -> str | None:
    """One line saying why a collapse kept ``achieved`` for ``target`` (``None`` when within
    :data:`TARGET_TOLERANCE`): below the smallest size, fibers that jump (``jumped``: why a layer
    got fewer units than planned, the criterion's words), or whole units."""
    if abs(achieved - target) <= TARGET_TOLERANCE:
        return None
    head = f"kept {achieved:.2%} of the parameters for target {target:.1%}"
    if target < smallest and achieved - smallest < TARGET_TOLERANCE:
        return (
            f"{head}: the nearest achievable, one unit per collapsed layer is {smallest:.2%} "
            "(heads and layers not collapsed stay whole)"
        )
    if jumped:
        return f"{head}: the fibers jump ({jumped}; later layers cannot take up the rest)"
    return f"{head}: the nearest achievable, layers are whole units"


def next_width(
    graph: LayerGraph,
    arch: Any,
    target: float,
    layer: str,
    chosen: Iterable[str],
    done: Mapping[str, int],
    params_full: int,
) -> int:
    """The width the budget gives ``layer`` now, planned again with the layers of ``chosen``
    already cut (``done``: name → width) fixed, so one that ended smaller than its share leaves
    its parameters to those after it."""
    open_layers = [n for n in chosen if n not in done]
    plan = plan_widths(
        graph, arch, target, open_layers=open_layers, fixed=done, params_full=params_full
    )
    return plan.sizes[layer]


def budget_record(
    target: float,
    achieved: float,
    taus: Mapping[str, float],
    smallest: float,
    jumped: str | None = None,
) -> dict[str, Any]:
    """What a fibration records of a size target (``extra["budget"]``): the target, the
    fraction kept, the τ it corresponds to (the largest of the layers' ``taus``), the layers'
    τ, and :func:`budget_note`'s line."""
    return {
        "target": target,
        "achieved": achieved,
        "tau": max(taus.values(), default=0.0),
        "layer_tau": dict(taus),
        "note": budget_note(target, achieved, smallest, jumped),
    }
