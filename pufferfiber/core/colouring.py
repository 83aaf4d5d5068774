"""The vocabulary of fibers: what a layer's fibers are (:class:`LayerFibers`), a network's
(:class:`Fibration`), a colouring of a producer's units (:class:`Colouring`) and the weight rows
a colouring sums over.

Both LSTM criteria (ours in :mod:`pufferfiber.core.fibers`, the published one in
:mod:`pufferfiber.core.published`) build on these, which is why they live below both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pufferfiber.core.graph import InputMap, LayerNode, recurrent_view, weight_view

# Approximate LSTM re-clustering rounds. Round 1 compares full W_hh rows (hidden colouring =
# the exact fibers); later rounds sum W_hh over the approximate clusters and cascade: on the
# upstream BeamRider epoch-51 checkpoint at τ = 0.5 (positions) rounds 1..6 give 248, 48, 75,
# 68, 68, 69 LSTM fibers (no fixed point). One round is the faithful default; more is opt-in.
DEFAULT_LSTM_ROUNDS = 1


# --------------------------------------------------------------------------- results


@dataclass
class LayerFibers:
    """The fibers of one layer.

    ``labels[u]`` is the fiber of unit ``u`` (0..n_fibers-1, numbered by first occurrence).
    ``collapsed`` is False for a layer left whole (every unit its own fiber). ``rounds`` is
    the number of recurrent colouring rounds (LSTM only).
    """

    node: LayerNode
    labels: np.ndarray
    collapsed: bool = True
    rounds: int = 0
    scales: torch.Tensor | None = None  # ReLU fold factors (see fold_scales); None = all 1

    @property
    def n_fibers(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    @property
    def representatives(self) -> np.ndarray:
        """Lowest unit index of each fiber (fiber order)."""
        return np.unique(self.labels, return_index=True)[1]


@dataclass
class Fibration:
    """Fibers of every hidden layer, in forward order, with the settings that produced them."""

    threshold: float
    flatten_colours: str
    layers: list[LayerFibers]
    side: str = "in"  # "in": fibers, "out": opfibers
    max_lstm_rounds: int = DEFAULT_LSTM_ROUNDS
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> LayerFibers:
        for layer in self.layers:
            if key in (layer.node.label, layer.node.name):
                return layer
        raise KeyError(key)

    def get(self, node: LayerNode) -> LayerFibers | None:
        return next((f for f in self.layers if f.node.name == node.name), None)

    @property
    def counts(self) -> dict[str, int]:
        """Layer label → number of fibers."""
        return {f.node.label: f.n_fibers for f in self.layers}

    @property
    def lstm_rounds(self) -> int:
        """Colouring rounds of the recurrent layer (0 when it was not collapsed)."""
        return max((f.rounds for f in self.layers if f.node.recurrent), default=0)


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Colouring:
    """A partition of a producer's units plus each unit's fold factor (see :func:`fold_scales`)."""

    labels: torch.Tensor  # long [units]
    count: int
    scales: torch.Tensor  # float64 [units]

    @classmethod
    def discrete(cls, n: int) -> Colouring:
        return cls(torch.arange(n), n, torch.ones(n, dtype=torch.float64))

    @classmethod
    def of(cls, labels: np.ndarray, scales: torch.Tensor | None = None) -> Colouring:
        lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        ones = torch.ones(len(lab), dtype=torch.float64)
        return cls(lab, int(lab.max()) + 1 if len(lab) else 0, ones if scales is None else scales)

    @property
    def is_trivial(self) -> bool:
        """Every unit its own colour, in order, unscaled (summing over it changes nothing)."""
        n = len(self.labels)
        return (
            self.count == n
            and bool(torch.equal(self.labels, torch.arange(n)))
            and bool((self.scales == 1).all())
        )

    def matrix(self) -> torch.Tensor:
        """``[units, colours]`` float64: the fold factor of unit u in column labels[u]."""
        m = torch.zeros(len(self.labels), self.count, dtype=torch.float64)
        m[torch.arange(len(self.labels)), self.labels] = self.scales
        return m


def sum_over_colours(view: torch.Tensor, colouring: Colouring, axis: int = 2) -> torch.Tensor:
    """Sum a unit view over the colour classes of ``axis`` (scaled by the fold factors).

    Columns are sorted by colour and summed in contiguous runs (``np.add.reduceat``): one
    pass over the tensor, much faster than a scatter-add along an inner axis or a product
    with the indicator matrix. A trivial colouring is a plain copy.
    """
    if colouring.is_trivial:
        return view.double().clone()
    moved = view.double().movedim(axis, 0)  # colour axis first: rows gathered contiguously
    counts = np.bincount(colouring.labels.numpy(), minlength=colouring.count)
    if counts.min() == 0:  # an empty colour (hand-made labels): reduceat cannot express it
        return (moved.movedim(0, -1) @ colouring.matrix()).movedim(-1, axis)
    order = np.argsort(colouring.labels.numpy(), kind="stable")
    flat = moved.reshape(moved.shape[0], -1).numpy()[order] * colouring.scales.numpy()[order, None]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    summed = np.add.reduceat(flat, starts, axis=0)
    return torch.from_numpy(summed).reshape(colouring.count, *moved.shape[1:]).movedim(0, axis)


def node_rows(
    node: LayerNode,
    params: Mapping[str, torch.Tensor],
    inputs: Colouring,
    *,
    pooled: bool = False,
) -> torch.Tensor:
    """Input-collapsed rows ``[units, d]`` of an encoder node (float64), bias last.

    ``pooled`` also sums over positions after a flatten (the published reference). The rows
    of a recurrent layer also depend on its own colouring: see :func:`recurrent_rows`.
    """
    if node.recurrent:
        raise ValueError(f"{node.label}: recurrent rows need the hidden colouring")
    parts = [input_part(node, params, inputs, pooled=pooled), bias_part(node, params)]
    return torch.cat(parts, dim=2).flatten(1)


def recurrent_rows(
    node: LayerNode,
    params: Mapping[str, torch.Tensor],
    inputs: Colouring,
) -> Callable[[np.ndarray], np.ndarray]:
    """The rows of a recurrent layer as a function of its own partition ``labels``: per gate,
    ``W_ih`` summed over the input colours, the combined biases, then ``W_hh`` summed over
    ``labels`` (float64 ``[units, d]``). The input side is computed once."""
    fixed = torch.cat([input_part(node, params, inputs), bias_part(node, params)], dim=2)
    w_hh = recurrent_view(node, params[node.recurrent_key or ""])

    def rows_for(labels: np.ndarray) -> np.ndarray:
        hh = sum_over_colours(w_hh, Colouring.of(labels)).flatten(2)
        return torch.cat([fixed, hh], dim=2).flatten(1).numpy()

    return rows_for


def input_part(
    node: LayerNode, params: Mapping[str, torch.Tensor], inputs: Colouring, *, pooled: bool = False
) -> torch.Tensor:
    """``[units, gates, colours·extent]``: incoming weights summed over input colours."""
    w = sum_over_colours(weight_view(node, params[node.weight_key]), inputs)
    if pooled and node.mapping == InputMap.FLATTEN:
        w = w.sum(dim=3, keepdim=True)
    return w.flatten(2)


def bias_part(node: LayerNode, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``[units, gates, k]``: the biases combined as the layer's kind uses them (one entry for
    a single bias or the LSTM's ``b_ih + b_hh``; see :class:`pufferfiber.core.graph.LayerKind`)."""
    return node.spec.combined_bias(node, params)


def fold_scales(rows: torch.Tensor, colouring: Colouring) -> torch.Tensor:
    """Fold factor of each unit: its row's projection on its fiber's mean row.

    For rows that are positive multiples ``c_j · w`` this is exactly ``c_j / mean(c)``, so a
    ReLU fiber collapses faithfully with outgoing column ``Σ_j s_j · w_out,j``; duplicates give
    1. Negative projections are clipped to 0 (ReLU is only positively homogeneous).
    """
    mean = mean_over_fibers(rows, colouring)[colouring.labels]
    num = (rows * mean).sum(dim=1)
    den = (mean * mean).sum(dim=1)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 1.0).clamp(min=0.0)


def mean_over_fibers(x: torch.Tensor, colouring: Colouring, axis: int = 0) -> torch.Tensor:
    """Mean of ``x`` over each fiber along ``axis`` (fibers in label order)."""
    if colouring.count == len(colouring.labels) and colouring.is_trivial:
        return x.double().clone()
    counts = torch.bincount(colouring.labels, minlength=colouring.count).double()
    plain = Colouring(colouring.labels, colouring.count, 1.0 / counts[colouring.labels])
    return sum_over_colours(x, plain, axis)
