"""Fibers (and opfibers) of a policy's layers: which units compute the same signal.

The mathematics is SPEC §3. For each collapsible layer, in forward order along the layer graph
(:mod:`pufferfiber.graph`), every unit gets an *input-collapsed row*: its incoming weights
summed over each colour class (fiber) of the producer, with the bias as the last entry. Units
whose rows agree form a fiber.

* ``threshold == 0`` gives the **exact** fibers (the coarsest balanced colouring): rows equal up
  to a relative float tolerance :data:`EXACT_RTOL`. For ReLU layers rows are compared up to a
  positive factor (ReLU is positively homogeneous; the collapse folds the factor into the
  outgoing column); LSTM rows must be equal. The LSTM's recurrent weights are refined from one
  colour to a true fixed point (at most ``n`` rounds).
* ``0 < threshold <= 2`` gives **approximate** fibers: cosine distance ``1 - cos`` between rows,
  agglomerative clustering with average linkage, merge while the distance is ``<= threshold``
  (scipy ``linkage`` + ``fcluster(criterion="distance")``). For the LSTM the hidden colouring
  starts from the exact fibers and is re-clustered for at most ``max_lstm_rounds`` rounds
  (default :data:`DEFAULT_LSTM_ROUNDS` = 1): further rounds cascade (SPEC §6).

Zero rows: the cosine distance between two all-zero rows is 0 (both units output the constant
ReLU(0) / the same gate values, so they are the same signal) and between a zero row and a
non-zero row it is 1 (no direction in common, as scikit-learn's ``cosine_distances``).

At the conv → Linear boundary the colour of Linear input ``k`` is ``(fiber of channel, position)``
(``flatten_colours="positions"``, a true fibration). ``"pooled"`` reproduces the published
reference, which sums a row over image positions too (more merges, not faithful).

Labels are deterministic: fibers are numbered by first occurrence, so the representative of a
fiber (its lowest unit index) is the first unit carrying its label.

*Opfibers* are the same construction on the output side (transposed weights), walking back
from the heads, whose outputs each have their own colour.

``fibers.pkl`` (:func:`save_fibers` / :func:`load_fibers`) is a dict of plain Python and numpy
values only, read back with a restricted unpickler that refuses anything else.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pufferfiber.graph import (
    LayerGraph,
    LayerNode,
    bias_view,
    build_graph,
    recurrent_view,
    weight_view,
)
from pufferfiber.policy import Policy
from pufferfiber.schemas import FIBERS_FORMAT, FibersHeader

FLATTEN_COLOURS = ("positions", "pooled")
# LSTM criteria: "units" (ours: a unit's four gate rows with biases, exact fixed point, then
# bounded re-clustering) or "published" (the reference's joint gate-row clustering, see
# pufferfiber.published). The first is the default.
LSTM_CRITERIA = ("units", "published")
EXACT_RTOL = 1e-5  # relative Euclidean tolerance for "equal" rows (float32 weights summed)
# Approximate LSTM re-clustering rounds. Round 1 compares full W_hh rows (hidden colouring =
# the exact fibers); later rounds sum W_hh over the approximate clusters and cascade: on the
# upstream BeamRider epoch-51 checkpoint at τ = 0.5 (positions) rounds 1..6 give 248, 48, 75,
# 68, 68, 69 LSTM fibers (no fixed point). One round is the faithful default; more is opt-in.
DEFAULT_LSTM_ROUNDS = 1
_BLOCK = 1024  # rows per block of pairwise products (bounds peak memory to ~n·block floats)
_SLACK = 1e-5  # float32 products: keep every edge that float64 could put at distance <= τ
_MAX_EDGES_PER_ROW = 64  # denser "close" graphs are clustered whole (one big component anyway)
# Where the pairwise products run (None = numpy on the CPU); set with :func:`products_on`.
_PRODUCTS_DEVICE: ContextVar[torch.device | None] = ContextVar("products_device", default=None)


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
        return max((f.rounds for f in self.layers if f.node.kind == "lstm"), default=0)


# --------------------------------------------------------------------------- partitions


def relabel_first_occurrence(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0, 1, ... in order of first appearance (deterministic fiber ids)."""
    labels = np.asarray(labels)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def meet(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The common refinement of two partitions (units together iff together in both)."""
    _, inverse = np.unique(np.stack([a, b], axis=1), axis=0, return_inverse=True)
    return relabel_first_occurrence(inverse.reshape(-1))


@contextmanager
def products_on(device: str | torch.device | None) -> Iterator[None]:
    """Run the pairwise row products (the ``n²·d`` part of finding fibers) on ``device``.

    ``with products_on("cuda"): compute_fibers(...)`` gives the same fibers as the CPU: only
    the candidate products move (full float32/float64 precision, TF32 off); the exact tests,
    the clustering and the labels stay on the CPU. ``None`` or ``"cpu"``: numpy, the default.
    """
    target = None if device is None else torch.device(device)
    token = _PRODUCTS_DEVICE.set(None if target is None or target.type == "cpu" else target)
    try:
        yield
    finally:
        _PRODUCTS_DEVICE.reset(token)


def _gram_blocks(x: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(i0, i1, x[i0:i1] @ x[i0:].T)`` for the row blocks of ``x`` (upper block rows only),
    computed in ``x``'s dtype with numpy or on the device of :func:`products_on`."""
    n, device = len(x), _PRODUCTS_DEVICE.get()
    if device is None:
        for i0 in range(0, n, _BLOCK):
            i1 = min(n, i0 + _BLOCK)
            yield i0, i1, x[i0:i1] @ x[i0:].T
        return
    on_device = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would break the float32 slack bounds
    try:
        for i0 in range(0, n, _BLOCK):
            i1 = min(n, i0 + _BLOCK)
            yield i0, i1, (on_device[i0:i1] @ on_device[i0:].T).cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def cosine_distances_condensed(rows: np.ndarray) -> np.ndarray:
    """Condensed (scipy ``pdist`` layout) cosine distances ``1 - cos`` in ``[0, 2]``.

    Computed by blocks of matrix products (no per-unit loop); zero rows as the module says.
    """
    x = np.asarray(rows, dtype=np.float64)
    n = x.shape[0]
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    unit = x / np.where(zero, 1.0, norms)[:, None]
    out = np.empty(n * (n - 1) // 2)
    pos = 0
    for i0, i1, gram in _gram_blocks(unit):
        d = 1.0 - gram
        d[zero[i0:i1, None] & zero[None, i0:]] = 0.0
        np.clip(d, 0.0, 2.0, out=d)
        # Strict upper triangle of this block row, row-major = the condensed segment.
        upper = np.arange(n - i0)[None, :] > np.arange(i1 - i0)[:, None]
        seg = d[upper]
        out[pos : pos + seg.size] = seg
        pos += seg.size
    return out


def exact_partition(rows: np.ndarray, *, scale_free: bool) -> np.ndarray:
    """Units whose rows are equal (``scale_free``: equal up to a positive factor).

    Equal means ``|a - b| <= EXACT_RTOL · max(|a|, |b|)``; groups are the connected components
    of that relation (for truly equal rows it is already transitive).
    """
    x = np.asarray(rows, dtype=np.float64)
    n = x.shape[0]
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    sq = np.einsum("ij,ij->i", x, x)
    if scale_free:
        x = x / np.sqrt(np.where(sq == 0, 1.0, sq))[:, None]
        sq = (sq > 0).astype(np.float64)
    # Candidates from float32 products (loose bound), then the exact test in float64 on those
    # pairs only: the float32 cancellation error (~1e-7·|a|²) is far above EXACT_RTOL².
    x32, sq32 = x.astype(np.float32), sq.astype(np.float32)
    src, dst = [], []
    for i0, i1, gram in _gram_blocks(x32):
        dist2 = sq32[i0:i1, None] + sq32[None, i0:] - 2.0 * gram
        i, j = np.nonzero(dist2 <= 1e-4 * np.maximum(sq32[i0:i1, None], sq32[None, i0:]))
        src.append(i + i0)
        dst.append(j + i0)
    s, d = np.concatenate(src), np.concatenate(dst)
    diff2 = np.einsum("ij,ij->i", x[s] - x[d], x[s] - x[d])
    keep = diff2 <= EXACT_RTOL**2 * np.maximum(sq[s], sq[d])
    s, d = s[keep], d[keep]
    graph = coo_matrix((np.ones(s.size, dtype=np.int8), (s, d)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return relabel_first_occurrence(labels)


def average_linkage_labels(rows: np.ndarray, threshold: float) -> np.ndarray:
    """Average-linkage clusters of all ``rows`` at once (merge while distance ``<= threshold``)."""
    if len(rows) <= 1:
        return np.zeros(len(rows), dtype=np.int64)
    tree = linkage(cosine_distances_condensed(rows), method="average")
    return relabel_first_occurrence(fcluster(tree, t=threshold, criterion="distance"))


def close_components(rows: np.ndarray, threshold: float) -> np.ndarray | None:
    """Connected components of the graph "cosine distance <= threshold" (``None``: too dense).

    Average-linkage clusters never span two components: merging clusters A and B needs an
    average distance <= τ, hence some pair (a, b) at distance <= τ, hence an edge. So each
    component can be clustered on its own, which avoids the ``n²`` condensed matrix. Products
    are float32 with a small slack: an extra edge only joins components, never changes a result.
    """
    x = np.asarray(rows, dtype=np.float64)
    n = len(x)
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    unit = (x / np.where(zero, 1.0, norms)[:, None]).astype(np.float32)
    src, dst, edges = [], [], 0
    for i0, i1, gram in _gram_blocks(unit):
        close = gram >= np.float32(1.0 - threshold - _SLACK)
        close[zero[i0:i1, None] & zero[None, i0:]] = True
        i, j = np.nonzero(close)
        edges += i.size
        if edges > _MAX_EDGES_PER_ROW * n:
            return None
        src.append(i + i0)
        dst.append(j + i0)
    s, d = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(s.size, dtype=np.int8), (s, d)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def cluster_rows(rows: np.ndarray, threshold: float, *, scale_free: bool = True) -> np.ndarray:
    """Fiber labels of ``rows``: exact at ``threshold == 0``, else average-linkage clusters.

    For ``threshold > 0`` clusters merge while their average cosine distance is ``<=
    threshold`` (scipy semantics; scikit-learn's ``distance_threshold`` merges on ``<``, which
    differs only on exact ties). Each component of the "distance <= τ" graph is clustered on
    its own (same result, see :func:`close_components`); singletons and pairs need no linkage.
    """
    n = len(rows)
    if threshold == 0 or n <= 1:
        return exact_partition(rows, scale_free=scale_free)
    components = close_components(rows, threshold)
    if components is None:
        return average_linkage_labels(rows, threshold)
    order = np.argsort(components, kind="stable")
    sizes = np.bincount(components)
    labels = components.astype(np.int64) * n  # room for sub-cluster ids inside a component
    groups = np.split(order, np.cumsum(sizes)[:-1])
    triples = np.array([g for g in groups if len(g) == 3], dtype=np.int64).reshape(-1, 3)
    labels[triples] += _triple_labels(np.asarray(rows, dtype=np.float64)[triples], threshold)
    for members in (g for g in groups if len(g) > 3):  # loop over components, not units
        labels[members] += average_linkage_labels(rows[members], threshold)
    return relabel_first_occurrence(labels)


def _triple_labels(rows: np.ndarray, threshold: float) -> np.ndarray:
    """Average linkage of many 3-point components at once (``rows``: ``[m, 3, d]``).

    The closest pair merges when its distance is <= τ; the third point joins when its mean
    distance to that pair is <= τ (the linkage tree of three points, vectorised).
    """
    norms = np.linalg.norm(rows, axis=2, keepdims=True)
    unit = rows / np.where(norms == 0, 1.0, norms)
    zero = norms[..., 0] == 0
    pairs = np.array([[0, 1], [0, 2], [1, 2]])
    d = 1.0 - np.einsum("mpd,mpd->mp", unit[:, pairs[:, 0]], unit[:, pairs[:, 1]])
    d[zero[:, pairs[:, 0]] & zero[:, pairs[:, 1]]] = 0.0
    d = np.clip(d, 0.0, 2.0)
    first = d.argmin(axis=1)  # pair (0,1), (0,2) or (1,2); the third point is 2, 1 or 0
    d_first = d[np.arange(len(d)), first]
    d_third = (d.sum(axis=1) - d_first) / 2.0
    merge_pair = d_first <= threshold
    merge_all = merge_pair & (d_third <= threshold)
    out = np.tile(np.arange(3), (len(d), 1))
    lone = 2 - first  # index of the point outside the closest pair
    paired = np.where(merge_pair[:, None], np.where(np.arange(3) == lone[:, None], 1, 0), out)
    return np.where(merge_all[:, None], 0, paired)


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
    params: dict[str, torch.Tensor],
    inputs: Colouring,
    hidden: Colouring | None = None,
    *,
    pooled: bool = False,
) -> torch.Tensor:
    """Input-collapsed rows ``[units, d]`` of a node (float64), bias last per gate.

    ``hidden`` is the current colouring of the LSTM's own units (its ``W_hh`` columns);
    ``pooled`` also sums over positions after a flatten (the published reference).
    """
    parts = [input_part(node, params, inputs, pooled=pooled)]
    if node.recurrent_key is not None:
        if hidden is None:
            raise ValueError("the LSTM rows need the hidden colouring")
        hh = sum_over_colours(recurrent_view(node, params[node.recurrent_key]), hidden)
        parts.append(hh.flatten(2))
    parts.append(bias_part(node, params))
    return torch.cat(parts, dim=2).flatten(1)


def input_part(
    node: LayerNode, params: dict[str, torch.Tensor], inputs: Colouring, *, pooled: bool = False
) -> torch.Tensor:
    """``[units, gates, colours·extent]``: incoming weights summed over input colours."""
    w = sum_over_colours(weight_view(node, params[node.weight_key]), inputs)
    if pooled and node.mapping == "flatten":
        w = w.sum(dim=3, keepdim=True)
    return w.flatten(2)


def bias_part(node: LayerNode, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[units, gates, 1]``: the summed biases (only ``b_ih + b_hh`` matters for the LSTM)."""
    bias = sum(bias_view(node, params[k]).double() for k in node.bias_keys)
    return torch.as_tensor(bias).unsqueeze(-1)


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


# --------------------------------------------------------------------------- fibers


def _check(
    threshold: float, flatten_colours: str, max_lstm_rounds: int = 1, lstm_criterion: str = "units"
) -> None:
    if lstm_criterion not in LSTM_CRITERIA:
        raise ValueError(f"lstm_criterion must be one of {LSTM_CRITERIA}, got {lstm_criterion!r}")
    if max_lstm_rounds < 1:
        raise ValueError(f"max_lstm_rounds must be at least 1, got {max_lstm_rounds}")
    if not 0.0 <= threshold <= 2.0:
        raise ValueError(f"threshold must be in [0, 2], got {threshold}")
    if flatten_colours not in FLATTEN_COLOURS:
        raise ValueError(
            f"flatten_colours must be one of {FLATTEN_COLOURS}, got {flatten_colours!r}"
        )


def selected_layers(graph: LayerGraph, layers: list[str] | None) -> set[str]:
    """Names of the nodes to collapse (see :meth:`LayerGraph.select_hidden`)."""
    return {n.name for n in graph.select_hidden(layers)}


def _policy_params(policy: Policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in policy.state_dict().items()}


def compute_fibers(
    policy: Policy,
    threshold: float,
    *,
    flatten_colours: str = "positions",
    layers: list[str] | None = None,
    max_lstm_rounds: int = DEFAULT_LSTM_ROUNDS,
    lstm_criterion: str = "units",
) -> Fibration:
    """Fibers of every hidden layer of ``policy`` at ``threshold`` (see the module docstring).

    ``layers`` selects the layers to collapse (names, labels or kinds); the others keep every
    unit as its own fiber and colour their consumers' inputs discretely. ``lstm_criterion``
    is one of :data:`LSTM_CRITERIA` (``"published"``: :mod:`pufferfiber.published`; its fiber
    count after each round goes to ``extra["published_lstm_counts"]``).
    """
    _check(threshold, flatten_colours, max_lstm_rounds, lstm_criterion)
    extra: dict[str, Any] = {"lstm_criterion": lstm_criterion}
    graph = build_graph(policy)
    params = _policy_params(policy)
    chosen = selected_layers(graph, layers)
    colourings: dict[str, Colouring] = {}
    result: list[LayerFibers] = []
    for node in graph.hidden:
        producer = graph.producer(node)
        inputs = colourings[producer.name] if producer else Colouring.discrete(node.in_units)
        pooled = flatten_colours == "pooled"
        if node.name not in chosen:
            fib = LayerFibers(node, np.arange(node.size), collapsed=False)
            colour = Colouring.discrete(node.size)
        elif node.kind == "lstm" and lstm_criterion == "published":
            from pufferfiber.published import published_lstm_fibers

            fib, extra["published_lstm_counts"] = published_lstm_fibers(
                node, params, inputs, threshold
            )
            colour = Colouring.of(fib.labels)
        elif node.kind == "lstm":
            fib = _lstm_fibers(node, params, inputs, threshold, max_lstm_rounds)
            colour = Colouring.of(fib.labels)
        else:
            rows = node_rows(node, params, inputs, pooled=pooled)
            fib = LayerFibers(node, cluster_rows(rows.numpy(), threshold, scale_free=True))
            colour = Colouring.of(fib.labels)
            if pooled and node.mapping == "flatten":  # fold factors of the quotient's rows
                rows = node_rows(node, params, inputs)
            # ReLU: positive multiples are one signal up to a factor the consumer absorbs.
            fib.scales = fold_scales(rows, colour)
            colour = Colouring(colour.labels, colour.count, fib.scales)
        colourings[node.name] = colour
        result.append(fib)
    return Fibration(threshold, flatten_colours, result, "in", max_lstm_rounds, extra)


def _lstm_fibers(
    node: LayerNode,
    params: dict[str, torch.Tensor],
    inputs: Colouring,
    threshold: float,
    max_rounds: int,
) -> LayerFibers:
    """Exact fixed point from one colour, then (approximate case) bounded re-clustering."""
    fixed = torch.cat([input_part(node, params, inputs), bias_part(node, params)], dim=2)
    w_hh = recurrent_view(node, params[node.recurrent_key or ""])

    def rows_for(labels: np.ndarray) -> np.ndarray:
        hh = sum_over_colours(w_hh, Colouring.of(labels)).flatten(2)
        return torch.cat([fixed, hh], dim=2).flatten(1).numpy()

    labels, rounds = recurrent_partition(node.size, rows_for, threshold, max_rounds)
    return LayerFibers(node, labels, rounds=rounds)


def recurrent_partition(
    size: int,
    rows_for: Callable[[np.ndarray], np.ndarray],
    threshold: float,
    max_rounds: int,
) -> tuple[np.ndarray, int]:
    """Partition of a recurrent layer whose rows depend on its own partition (``rows_for``).

    Starts from one colour and refines with exact equality to a true fixed point (at most
    ``size`` rounds); for ``threshold > 0`` then re-clusters at most ``max_rounds`` times,
    since approximate rounds can cascade (SPEC §6). Returns the labels and the rounds taken.
    """
    labels = np.zeros(size, dtype=np.int64)
    rows, rows_labels = None, None
    rounds = 0
    for rounds in range(1, size + 1):  # noqa: B007 - rounds is reported
        rows, rows_labels = rows_for(labels), labels
        refined = meet(labels, exact_partition(rows, scale_free=False))
        if refined.max() == labels.max():
            break
        labels = refined
        if labels.max() + 1 == size:  # discrete: nothing finer exists, a fixed point
            break
    if threshold == 0:
        return labels, rounds
    for rounds in range(1, max_rounds + 1):
        # Round 1 reuses the fixed point's rows when they were computed for its labels.
        if not (rounds == 1 and rows_labels is labels and rows is not None):
            rows = rows_for(labels)
        new = cluster_rows(rows, threshold, scale_free=True)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels, rounds


def compute_opfibers(
    policy: Policy,
    threshold: float,
    *,
    layers: list[str] | None = None,
    max_lstm_rounds: int = DEFAULT_LSTM_ROUNDS,
) -> Fibration:
    """Opfibers: units with the same outgoing pattern, walking back from the heads.

    A unit's *output-collapsed row* is its outgoing columns in every consumer, summed over the
    consumer's opfiber colours (head outputs are discrete); the LSTM adds its ``W_hh`` columns
    over its own colouring (iterated as for fibers). Flatten positions stay separate.
    """
    _check(threshold, "positions", max_lstm_rounds)
    graph = build_graph(policy)
    params = _policy_params(policy)
    chosen = selected_layers(graph, layers)
    colourings = {h.name: Colouring.discrete(h.size) for h in graph.heads}
    result: list[LayerFibers] = []
    for node in reversed(graph.hidden):
        consumers = graph.consumers(node)

        def rows_for(
            hidden: Colouring | None, node: LayerNode = node, consumers: list[LayerNode] = consumers
        ) -> np.ndarray:
            parts = [_out_columns(c, params[c.weight_key], colourings[c.name]) for c in consumers]
            if node.recurrent_key is not None and hidden is not None:
                hh = recurrent_view(node, params[node.recurrent_key])
                parts.append(_out_columns_view(hh, hidden))
            return torch.cat(parts, dim=1).numpy()

        if node.name not in chosen:
            fib = LayerFibers(node, np.arange(node.size), collapsed=False)
        elif node.kind == "lstm":
            fib = _lstm_opfibers(node, rows_for, threshold, max_lstm_rounds)
        else:
            # Exact opfibers need equal columns; approximate ones compare directions.
            fib = LayerFibers(node, cluster_rows(rows_for(None), threshold, scale_free=False))
        colourings[node.name] = Colouring.of(fib.labels)
        result.append(fib)
    return Fibration(threshold, "positions", result[::-1], "out", max_lstm_rounds)


def _out_columns(consumer: LayerNode, weight: torch.Tensor, colouring: Colouring) -> torch.Tensor:
    return _out_columns_view(weight_view(consumer, weight), colouring)


def _out_columns_view(view: torch.Tensor, colouring: Colouring) -> torch.Tensor:
    """``[producer units, d]``: a consumer's columns summed over its own (output) colours."""
    summed = sum_over_colours(view, colouring, axis=0)  # [k, gates, producer units, extent]
    return summed.permute(2, 0, 1, 3).flatten(1)


def _lstm_opfibers(
    node: LayerNode, rows_for: Any, threshold: float, max_rounds: int
) -> LayerFibers:
    labels, rounds = recurrent_partition(
        node.size, lambda labels: rows_for(Colouring.of(labels)), threshold, max_rounds
    )
    return LayerFibers(node, labels, rounds=rounds)


# --------------------------------------------------------------------------- fibers.pkl


def fibers_dict(
    fibration: Fibration,
    *,
    epoch: int,
    env: str,
    params_before: int,
    params_after: int,
) -> dict[str, Any]:
    """The documented ``fibers.pkl`` content (plain Python + numpy only).

    Keys: ``format``, ``threshold``, ``epoch``, ``env``, ``flatten_colours``, ``max_lstm_rounds``,
    ``lstm_rounds``, ``params_before``, ``params_after`` and ``layers``: one dict per hidden layer
    in forward order with ``name`` (state-dict module path), ``label``, ``kind``, ``size``,
    ``n_fibers``, ``collapsed`` (bool) and ``labels`` (``np.int64`` array, fiber id per unit).
    """
    return {
        "format": FIBERS_FORMAT,
        "threshold": float(fibration.threshold),
        "epoch": int(epoch),
        "env": str(env),
        "flatten_colours": fibration.flatten_colours,
        "max_lstm_rounds": int(fibration.max_lstm_rounds),
        "lstm_rounds": int(fibration.lstm_rounds),
        "params_before": int(params_before),
        "params_after": int(params_after),
        "layers": [
            {
                "name": f.node.name,
                "label": f.node.label,
                "kind": f.node.kind,
                "size": int(f.node.size),
                "n_fibers": int(f.n_fibers),
                "collapsed": bool(f.collapsed),
                "labels": np.asarray(f.labels, dtype=np.int64),
            }
            for f in fibration.layers
        ],
    }


class FibersFileError(ValueError):
    """``fibers.pkl`` is missing, corrupt, or holds something other than plain data."""


_ALLOWED_GLOBALS = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "bool"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "complex"),
    ("builtins", "slice"),
}


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain containers, numbers, strings and numpy arrays; refuses anything else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def save_fibers(path: Path | str, fibers: dict[str, Any]) -> Path:
    """Write ``fibers.pkl`` atomically (checks it reads back with the restricted loader)."""
    from pufferfiber.checkpoints import atomic_write_bytes

    data = pickle.dumps(fibers, protocol=4)
    _PlainUnpickler(io.BytesIO(data)).load()  # never write what load_fibers would refuse
    FibersHeader.from_dict(fibers, path)  # nor a header the readers could not use
    return atomic_write_bytes(Path(path), data)


def load_fibers(path: Path | str) -> dict[str, Any]:
    """Read ``fibers.pkl`` with the restricted unpickler; :class:`FibersFileError` otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FibersFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        obj = _PlainUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise FibersFileError(f"{path} is not a valid fibers file: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != FIBERS_FORMAT:
        raise FibersFileError(f"{path} is not a pufferfiber fibers file (format {FIBERS_FORMAT})")
    return obj
