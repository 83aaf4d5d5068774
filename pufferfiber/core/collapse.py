"""The quotient network: collapse every fiber of a :class:`Fibration` to one unit.

The collapsed policy is the same :class:`Policy` class with smaller sizes
(``LayerGraph.resized``: channels, hidden and recurrent widths), so it trains, saves and
collapses again like any other. Per node of the layer graph, in one vectorised pass:

* **columns** (inputs): the weight view's producer axis is summed over each producer fiber,
  each member's column scaled by its fold factor ``s_j`` (1 except for ReLU positive multiples);
  the recurrent layer's ``W_hh`` columns are summed over its own fibers; heads receive summed
  columns too;
* **rows** (the unit itself): the fiber's mean row, bias(es) included.

For a ReLU layer the fold factor of unit ``j`` is the projection of its row on the fiber's mean
row (``c_j / mean(c)`` for rows ``c_j · w``), so positive multiples collapse exactly; LSTM and
GRU gates are not homogeneous and always use ``s = 1``. For exact fibers the quotient computes
the same logits and value as the original (to float precision), for every input sequence and
recurrent state that is constant on fibers (e.g. zeros).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pufferfiber.core.colouring import Colouring, Fibration, mean_over_fibers, sum_over_colours
from pufferfiber.core.fibers import fiber_colourings, walk
from pufferfiber.core.graph import (
    LayerNode,
    bias_view,
    build_graph,
    recurrent_view,
    unview_bias,
    unview_weight,
    weight_view,
)
from pufferfiber.core.policy import Policy


def collapse_policy(policy: Policy, fibration: Fibration, *, scale_aware: bool = True) -> Policy:
    """The quotient of ``policy`` by ``fibration`` (a new policy; the original is untouched).

    ``scale_aware=False`` disables the ReLU fold factors (plain sum of outgoing columns).
    """
    graph = build_graph(policy)
    params = {k: v.detach().cpu().double() for k, v in policy.state_dict().items()}
    fibers = fiber_colourings(graph, params, fibration, scale_aware=scale_aware)
    new: dict[str, torch.Tensor] = {}

    def colour(node: LayerNode, inputs: Colouring) -> Colouring:
        own = fibers.get(node.name, Colouring.discrete(node.size))  # heads: every output
        new.update(_quotient_node(node, params, inputs, own))
        return own

    colourings = walk(graph, colour, graph.nodes)
    arch = graph.resized(policy.arch, {n.name: colourings[n.name].count for n in graph.hidden})
    # Built on the meta device: every weight is overwritten, so skip the orthogonal init (QR of
    # each matrix, most of the collapse time otherwise).
    with torch.device("meta"):
        quotient = Policy(arch)
    quotient = quotient.to_empty(device="cpu")
    dtype = next(policy.parameters()).dtype
    quotient.load_state_dict({k: v.to(dtype) for k, v in new.items()}, strict=True)
    return quotient.to(next(policy.parameters()).device)


def _quotient_node(
    node: LayerNode, params: Mapping[str, torch.Tensor], inputs: Colouring, own: Colouring
) -> dict[str, torch.Tensor]:
    """New tensors of one node: columns summed over producer fibers, rows averaged per fiber."""
    w = sum_over_colours(weight_view(node, params[node.weight_key]), inputs)
    if node.hidden:
        w = mean_over_fibers(w, own)
    out = {node.weight_key: unview_weight(node, w)}
    for key in node.bias_keys:
        b = bias_view(node, params[key])
        out[key] = unview_bias(node, mean_over_fibers(b, own) if node.hidden else b)
    if node.recurrent_key is not None:
        # The recurrent layer's own units are gates, not ReLU: their columns are plain sums.
        plain = Colouring(own.labels, own.count, torch.ones(node.size, dtype=torch.float64))
        hh = sum_over_colours(recurrent_view(node, params[node.recurrent_key]), plain)
        out[node.recurrent_key] = unview_weight(node, mean_over_fibers(hh, own))
    return out
