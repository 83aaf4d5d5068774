"""Fibers (and opfibers) of a policy's layers: which units compute the same signal.

The mathematics is in ``docs/method.md`` (§1). For each collapsible layer, in forward order
along the layer graph (:mod:`pufferfiber.core.graph`, one :func:`walk`), every unit gets an
*input-collapsed row*: its incoming weights summed over each colour class (fiber) of the
producer, with the bias(es) last. Units whose rows agree form a fiber; the rows are clustered
by :mod:`pufferfiber.core.clustering`.

* ``threshold == 0`` gives the **exact** fibers (the coarsest balanced colouring): rows equal up
  to a relative float tolerance (``clustering.EXACT_RTOL``). For ReLU layers rows are compared up
  to a positive factor (ReLU is positively homogeneous; the collapse folds the factor into the
  outgoing column); rows of the recurrent layer (LSTM or GRU, gated) must be equal. Its
  recurrent weights are refined from one colour to a true fixed point (at most ``n`` rounds).
* ``0 < threshold <= 2`` gives **approximate** fibers: cosine distance ``1 - cos`` between rows,
  average-linkage clusters merged while the distance is ``<= threshold``. For the recurrent
  layer the colouring starts from the exact fibers and is re-clustered for at most
  ``max_lstm_rounds`` rounds (default :data:`DEFAULT_LSTM_ROUNDS` = 1): further rounds cascade.

At the conv → Linear boundary the colour of Linear input ``k`` is ``(fiber of channel, position)``
(``flatten_colours="positions"``, a true fibration). ``"pooled"`` reproduces the published
reference, which sums a row over image positions too (more merges, not faithful).

Labels are deterministic: fibers are numbered by first occurrence, so the representative of a
fiber (its lowest unit index) is the first unit carrying its label.

*Opfibers* are the same construction on the output side (transposed weights), walking back
from the heads, whose outputs each have their own colour.

``fibers.pkl`` is written and read by :mod:`pufferfiber.io.fibersfile`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from pufferfiber.core.budget import budget_record, next_width, smallest_fraction, validate_target
from pufferfiber.core.clustering import cluster_rows, count_labels, exact_partition, meet
from pufferfiber.core.colouring import (
    DEFAULT_LSTM_ROUNDS,
    Colouring,
    Fibration,
    LayerFibers,
    fold_scales,
    node_rows,
    recurrent_rows,
    sum_over_colours,
)
from pufferfiber.core.graph import (
    InputMap,
    LayerGraph,
    LayerNode,
    build_graph,
    recurrent_view,
    weight_view,
)
from pufferfiber.core.policy import Policy
from pufferfiber.core.published import published_lstm_fibers
from pufferfiber.core.types import FLATTEN_COLOURS, LSTM_CRITERIA, validate_threshold

# FLATTEN_COLOURS (positions, pooled) and LSTM_CRITERIA, the choices of config.py: "units" (ours:
# a unit's four gate rows with biases, exact fixed point, then bounded re-clustering) or
# "published" (the reference's joint gate-row clustering, see pufferfiber.core.published). The first
# of each is the default.


# --------------------------------------------------------------------------- the walk


ColourFn = Callable[[LayerNode, Colouring], Colouring]


def walk(
    graph: LayerGraph, colour: ColourFn, nodes: Iterable[LayerNode] | None = None
) -> dict[str, Colouring]:
    """Colour the layers in forward order: ``colour(node, inputs)`` gets the colouring of the
    node's producer (discrete for the observation) and returns the node's own colouring.

    ``nodes`` defaults to the hidden layers; pass ``graph.nodes`` to visit the heads too. The
    one walk behind fibers, their fold factors, the collapse and symmetry breaking.
    """
    colourings: dict[str, Colouring] = {}
    for node in graph.hidden if nodes is None else nodes:
        producer = graph.producer(node)
        inputs = colourings[producer.name] if producer else Colouring.discrete(node.in_units)
        colourings[node.name] = colour(node, inputs)
    return colourings


def fiber_colourings(
    graph: LayerGraph,
    params: Mapping[str, torch.Tensor],
    fibration: Fibration,
    *,
    scale_aware: bool = True,
) -> dict[str, Colouring]:
    """Each hidden layer's fibers as a colouring with its fold factors (see :func:`fold_scales`).

    The factors :func:`compute_fibers` stored are reused; only fibers made elsewhere (hand-made,
    read from a file) get theirs from the rows here. Layers without a homogeneous activation
    (the recurrent layer) and ``scale_aware=False`` use factor 1.
    """

    def colour(node: LayerNode, inputs: Colouring) -> Colouring:
        fib = fibration.get(node)
        own = Colouring.of(fib.labels) if fib is not None else Colouring.discrete(node.size)
        if not (scale_aware and node.spec.homogeneous):
            return own
        scales = fib.scales if fib is not None else None
        if scales is None:
            scales = fold_scales(node_rows(node, params, inputs), own)
        return Colouring(own.labels, own.count, scales)

    return walk(graph, colour)


# --------------------------------------------------------------------------- fibers


def _check(
    threshold: float, flatten_colours: str, max_lstm_rounds: int = 1, lstm_criterion: str = "units"
) -> float:
    if lstm_criterion not in LSTM_CRITERIA:
        raise ValueError(f"lstm_criterion must be one of {LSTM_CRITERIA}, got {lstm_criterion!r}")
    if max_lstm_rounds < 1:
        raise ValueError(f"max_lstm_rounds must be at least 1, got {max_lstm_rounds}")
    if flatten_colours not in FLATTEN_COLOURS:
        raise ValueError(
            f"flatten_colours must be one of {FLATTEN_COLOURS}, got {flatten_colours!r}"
        )
    return validate_threshold(threshold)


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
    target: float | None = None,
) -> Fibration:
    """Fibers of every hidden layer of ``policy`` at ``threshold`` (see the module docstring).

    ``layers`` selects the layers to collapse (names, labels or kinds); the others keep every
    unit as its own fiber and colour their consumers' inputs discretely. ``lstm_criterion``
    is one of :data:`LSTM_CRITERIA` (``"published"``: :mod:`pufferfiber.core.published`; its fiber
    count after each round goes to ``extra["published_lstm_counts"]``).

    ``target`` (a fraction of the parameters, in place of ``threshold``): each layer, in forward
    order, gets its share of the budget (:func:`pufferfiber.core.budget.plan_widths`, planned
    again with the earlier layers at their fiber counts) and its dendrogram is cut at that many
    clusters (:func:`~pufferfiber.core.clustering.count_labels`). The fibration's ``threshold``
    is then the largest cut height (the τ it corresponds to); ``extra["budget"]`` holds target,
    achieved fraction, per-layer τ and a note when the size missed the target.
    """
    if target is not None:
        target = validate_target(target)
        if lstm_criterion != "units":
            raise ValueError("a size target works with lstm_criterion 'units' only")
        threshold = 0.0
    threshold = _check(threshold, flatten_colours, max_lstm_rounds, lstm_criterion)
    extra: dict[str, Any] = {"lstm_criterion": lstm_criterion}
    graph = build_graph(policy)
    params = _policy_params(policy)
    chosen = selected_layers(graph, layers)
    pooled = flatten_colours == "pooled"
    result: list[LayerFibers] = []
    full = policy.parameter_count()
    done: dict[str, int] = {}
    planned: dict[str, int] = {}
    taus: dict[str, float] = {}

    def share(node: LayerNode) -> int | None:
        if target is None:
            return None
        planned[node.name] = next_width(graph, policy.arch, target, node.name, chosen, done, full)
        return planned[node.name]

    def colour(node: LayerNode, inputs: Colouring) -> Colouring:
        count = None if node.name not in chosen else share(node)
        if node.name not in chosen:
            fib = LayerFibers(node, np.arange(node.size), collapsed=False)
        elif node.recurrent and lstm_criterion == "published":
            fib, extra["published_lstm_counts"] = published_lstm_fibers(
                node, params, inputs, threshold
            )
        elif node.recurrent:
            rows_for = recurrent_rows(node, params, inputs)
            labels, rounds, height = recurrent_partition(
                node.size, rows_for, threshold, max_lstm_rounds, count=count
            )
            fib = LayerFibers(node, labels, rounds=rounds)
            taus[node.label] = height
        else:
            rows = node_rows(node, params, inputs, pooled=pooled)
            if count is None:
                fib = LayerFibers(node, cluster_rows(rows.numpy(), threshold, scale_free=True))
            else:
                labels, taus[node.label] = count_labels(rows.numpy(), count)
                fib = LayerFibers(node, labels)
            if pooled and node.mapping == InputMap.FLATTEN:  # fold factors of the quotient's rows
                rows = node_rows(node, params, inputs)
            # ReLU: positive multiples are one signal up to a factor the consumer absorbs.
            fib.scales = fold_scales(rows, Colouring.of(fib.labels))
        if node.name in chosen:
            done[node.name] = fib.n_fibers
        result.append(fib)
        return Colouring.of(fib.labels, fib.scales)

    walk(graph, colour)
    if target is not None:
        sizes = {**{n.name: n.size for n in graph.hidden}, **done}
        achieved = graph.resized(policy.arch, sizes).parameter_count() / full
        smallest = smallest_fraction(graph, policy.arch, sorted(chosen), full)
        short = [graph[n].label for n in planned if done[n] < planned[n]]
        jumped = (
            f"tied merges: {', '.join(short)} has fewer fibers than its share" if short else None
        )
        extra["budget"] = budget_record(target, achieved, taus, smallest, jumped)
        threshold = extra["budget"]["tau"]  # the τ the target corresponds to
    return Fibration(threshold, flatten_colours, result, "in", max_lstm_rounds, extra)


def recurrent_partition(
    size: int,
    rows_for: Callable[[np.ndarray], np.ndarray],
    threshold: float,
    max_rounds: int,
    *,
    count: int | None = None,
) -> tuple[np.ndarray, int, float]:
    """Partition of a recurrent layer whose rows depend on its own partition (``rows_for``).

    Starts from one colour and refines with exact equality to a true fixed point (at most
    ``size`` rounds); for ``threshold > 0`` then re-clusters at most ``max_rounds`` times,
    since approximate rounds can cascade. ``count`` (a size target's share) re-clusters into
    that many fibers instead (:func:`~pufferfiber.core.clustering.count_labels`). Returns the
    labels, the rounds taken and the height of the last cut (``threshold`` without ``count``).
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
    height = threshold
    if threshold == 0 and count is None:
        return labels, rounds, height
    for rounds in range(1, max_rounds + 1):
        # Round 1 reuses the fixed point's rows when they were computed for its labels.
        if not (rounds == 1 and rows_labels is labels and rows is not None):
            rows = rows_for(labels)
        if count is None:
            new = cluster_rows(rows, threshold, scale_free=True)
        else:
            new, height = count_labels(rows, count)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels, rounds, height


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
    threshold = _check(threshold, "positions", max_lstm_rounds)
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
        elif node.recurrent:
            fib = _recurrent_opfibers(node, rows_for, threshold, max_lstm_rounds)
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


def _recurrent_opfibers(
    node: LayerNode, rows_for: Any, threshold: float, max_rounds: int
) -> LayerFibers:
    labels, rounds, _ = recurrent_partition(
        node.size, lambda labels: rows_for(Colouring.of(labels)), threshold, max_rounds
    )
    return LayerFibers(node, labels, rounds=rounds)


# --------------------------------------------------------------------------- fibers.pkl
