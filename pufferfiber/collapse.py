"""The quotient network: collapse every fiber of a :class:`Fibration` to one unit.

The collapsed policy is the same :class:`Policy` class with smaller sizes
(``arch.replace(channels=..., hidden=..., lstm=...)``), so it trains, saves and collapses again
like any other. Per node of the layer graph, in one vectorised pass:

* **columns** (inputs): the weight view's producer axis is summed over each producer fiber,
  each member's column scaled by its fold factor ``s_j`` (1 except for ReLU positive multiples);
  the LSTM's ``W_hh`` columns are summed over its own fibers; heads receive summed columns too;
* **rows** (the unit itself): the fiber's mean row, bias(es) included.

For a ReLU layer the fold factor of unit ``j`` is the projection of its row on the fiber's mean
row (``c_j / mean(c)`` for rows ``c_j · w``), so positive multiples collapse exactly; LSTM gates
are not homogeneous and always use ``s = 1``. For exact fibers the quotient computes the same
logits and value as the original (to float precision), for every input sequence and LSTM
state that is constant on fibers (e.g. zeros).
"""

from __future__ import annotations

import torch

from pufferfiber.fibers import (
    Colouring,
    Fibration,
    fold_scales,
    mean_over_fibers,
    node_rows,
    sum_over_colours,
)
from pufferfiber.graph import LayerNode, bias_view, build_graph, recurrent_view, weight_view
from pufferfiber.policy import Policy


def _unview_weight(node: LayerNode, view: torch.Tensor, weight_shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`graph.weight_view` for a view with new unit / input counts."""
    units, gates, inputs, extent = view.shape
    if gates > 1:  # back to gate-major rows
        return view.transpose(0, 1).reshape(gates * units, inputs * extent)
    if node.kind == "conv":
        return view.reshape(units, inputs, *weight_shape[2:])
    return view.reshape(units, inputs * extent)


def _unview_bias(view: torch.Tensor) -> torch.Tensor:
    return view.transpose(0, 1).reshape(-1)


def collapse_policy(policy: Policy, fibration: Fibration, *, scale_aware: bool = True) -> Policy:
    """The quotient of ``policy`` by ``fibration`` (a new policy; the original is untouched).

    ``scale_aware=False`` disables the ReLU fold factors (plain sum of outgoing columns).
    """
    graph = build_graph(policy)
    params = {k: v.detach().cpu().double() for k, v in policy.state_dict().items()}
    colourings: dict[str, Colouring] = {}
    new: dict[str, torch.Tensor] = {}
    for node in graph:
        producer = graph.producer(node)
        inputs = colourings[producer.name] if producer else Colouring.discrete(node.in_units)
        fib = fibration.get(node) if node.hidden else None
        own = Colouring.of(fib.labels) if fib is not None else Colouring.discrete(node.size)
        if node.activation == "relu" and scale_aware:
            scales = fib.scales if fib is not None else None
            if scales is None:  # fibers made elsewhere: fold factors from the quotient's rows
                scales = fold_scales(node_rows(node, params, inputs), own)
            own = Colouring(own.labels, own.count, scales)
        colourings[node.name] = own
        new.update(_quotient_node(node, params, inputs, own))
    arch = policy.arch.replace(
        channels=tuple(colourings[n.name].count for n in graph.hidden if n.kind == "conv"),
        hidden=tuple(colourings[n.name].count for n in graph.hidden if n.kind == "linear"),
        lstm=next(colourings[n.name].count for n in graph.hidden if n.kind == "lstm"),
    )
    # Built on the meta device: every weight is overwritten, so skip the orthogonal init (QR of
    # each matrix, most of the collapse time otherwise).
    with torch.device("meta"):
        quotient = Policy(arch)
    quotient = quotient.to_empty(device="cpu")
    dtype = next(policy.parameters()).dtype
    quotient.load_state_dict({k: v.to(dtype) for k, v in new.items()}, strict=True)
    return quotient.to(next(policy.parameters()).device)


def _quotient_node(
    node: LayerNode, params: dict[str, torch.Tensor], inputs: Colouring, own: Colouring
) -> dict[str, torch.Tensor]:
    """New tensors of one node: columns summed over producer fibers, rows averaged per fiber."""
    weight = params[node.weight_key]
    w = sum_over_colours(weight_view(node, weight), inputs)
    if node.hidden:
        w = mean_over_fibers(w, own)
    out = {node.weight_key: _unview_weight(node, w, weight.shape)}
    for key in node.bias_keys:
        b = bias_view(node, params[key])
        out[key] = _unview_bias(mean_over_fibers(b, own) if node.hidden else b)
    if node.recurrent_key is not None:
        # The LSTM's own units are gates, not ReLU: their columns are plain sums.
        plain = Colouring(own.labels, own.count, torch.ones(node.size, dtype=torch.float64))
        hh = sum_over_colours(recurrent_view(node, params[node.recurrent_key]), plain)
        out[node.recurrent_key] = _unview_weight(node, mean_over_fibers(hh, own), hh.shape)
    return out
