"""The random-ablation control: keep randomly chosen units, drop the others without folding.

A collapse is worth something only if it beats doing the simplest thing at the same size. This
module gives that simplest thing: :class:`RandomUnits` keeps, in every hidden layer, a random
subset of units of the widths asked for (e.g. a collapsed network's), with their trained
weights, and deletes the rest. Nothing is folded into the kept units: where a collapse sums a
fiber's outgoing columns into its representative (or refits them on data), the ablation simply
removes the dropped units' columns, so a dropped unit reads as a constant 0 downstream.

It has the criteria's interface (:class:`~pufferfiber.core.criteria.FiberCriterion`:
``fit`` / ``transform`` / ``fit_transform`` / ``fit_predict`` / ``describe``), so the same
collapse pipeline writes its model, ``fibers.pkl`` and ``fidelity.json`` (KL and value error
measured the same way). It is a control, not a fiber criterion: it is not in
:data:`~pufferfiber.core.types.CRITERIA`. Its fibration is a
:class:`~pufferfiber.core.datafibers.DataFibration` whose reconstructions are selections
(``coef`` has one 1 per kept unit, the dropped units are "constant" 0), which is exactly what
the data criterion's folding code needs to delete units.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from pufferfiber.core.colouring import Fibration, LayerFibers
from pufferfiber.core.criteria import FiberCriterion, Network, _as_policy
from pufferfiber.core.datafibers import (
    DataFibration,
    Reconstruction,
    fold_layer,
    policy_from_params,
)
from pufferfiber.core.graph import LayerNode, build_graph
from pufferfiber.core.policy import Policy

RANDOM_CONTROL = "random"


def hidden_widths(policy: Policy) -> dict[str, int]:
    """Width of every hidden layer of ``policy`` by layer name (what :class:`RandomUnits` takes,
    e.g. read from a collapsed network)."""
    return {node.name: int(node.size) for node in build_graph(policy).hidden}


def selection(node: LayerNode, kept: np.ndarray) -> Reconstruction:
    """The reconstruction of ``node`` that keeps units ``kept`` (sorted) and replaces every
    other unit by the constant 0: no fit, no folding."""
    size = node.size
    coef = np.zeros((size, kept.size))
    coef[kept, np.arange(kept.size)] = 1.0
    constant = np.ones(size, dtype=bool)
    constant[kept] = False
    return Reconstruction(
        node=node,
        kept=kept,
        coef=coef,
        offset=np.zeros(size),
        constant=constant,
        fit_error=np.zeros(size),
    )


@dataclass
class RandomUnits(FiberCriterion):
    """Keep ``widths[layer]`` randomly chosen units of each hidden layer (name → width; a layer
    not named keeps all its units), drawn with ``numpy.random.default_rng(seed)`` layer by layer
    in forward order, so the same seed gives the same units."""

    name: ClassVar[str] = RANDOM_CONTROL
    widths: Mapping[str, int] = field(default_factory=dict)
    seed: int = 0
    threshold: float | None = field(default=None, init=False)
    target: float | None = field(default=None, init=False)
    fibration_: Fibration | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.widths.items() if int(v) < 1}
        if bad:
            raise ValueError(f"every layer keeps at least one unit, got {bad}")

    def fit(self, net: Network, observations: torch.Tensor | None = None) -> RandomUnits:
        """Draw the kept units (``observations`` are not needed and ignored)."""
        policy = _as_policy(net)
        graph = build_graph(policy)
        unknown = sorted(set(self.widths) - {n.name for n in graph.hidden})
        if unknown:
            raise ValueError(f"no hidden layer named {', '.join(unknown)} in this network")
        rng = np.random.default_rng(self.seed)
        recs: dict[str, Reconstruction] = {}
        layers = []
        for node in graph.hidden:
            width = int(self.widths.get(node.name, node.size))
            if width > node.size:
                raise ValueError(
                    f"{node.label} has {node.size} units, fewer than the {width} asked for"
                )
            kept = np.sort(rng.choice(node.size, size=width, replace=False)).astype(np.int64)
            rec = selection(node, kept)
            recs[node.name] = rec
            layers.append(LayerFibers(node, rec.labels(), collapsed=width < node.size))
        fibration = DataFibration(0.0, "positions", layers, extra={"criterion": self.name})
        fibration.reconstructions = recs
        self.fibration_ = fibration
        return self

    def _collapse(self, policy: Policy, fibration: Fibration) -> Policy:
        assert isinstance(fibration, DataFibration)
        dtype = next(policy.parameters()).dtype
        params = {k: v.detach().cpu().double() for k, v in policy.state_dict().items()}
        current = policy_from_params(policy.arch, params, dtype)
        for name, rec in fibration.reconstructions.items():
            # the layer as the network now is: its inputs may already be cut
            graph = build_graph(current)
            node = graph[name]
            params = fold_layer(graph, params, dataclasses.replace(rec, node=node))
            arch = graph.resized(current.arch, {name: len(rec.kept)})
            current = policy_from_params(arch, params, dtype)
        return current.to(next(policy.parameters()).device)

    def describe(self) -> dict[str, Any]:
        return {
            "criterion": self.name,
            "threshold": None,
            "widths": {k: int(v) for k, v in self.widths.items()},
            "seed": int(self.seed),
        }


__all__ = ["RANDOM_CONTROL", "RandomUnits", "hidden_widths", "selection"]
