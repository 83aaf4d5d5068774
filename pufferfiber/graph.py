"""The layer graph of a policy: which layer feeds which, and how units map to weights.

This module is the one place that knows the network's wiring (in the spirit of
Torch-Pruning's DepGraph). Everything that edits units (fibers, collapse, symmetry breaking)
asks it instead of indexing ``policy.network[7]``, so a collapsed policy (smaller sizes) or the
MLP policy (different Sequential layout) is handled by the same code.

A *node* is a layer whose units can be grouped: a conv layer (unit = output channel), a Linear
layer (unit = neuron), the LSTM (unit = hidden unit, owning four gate rows), or a head (actor,
critic; its units are outputs and are never collapsed). Each node knows its producer (the node
whose units are its inputs, ``None`` for the observation) and how its input index maps to
producer units: ``identity`` (input k is producer unit k) or ``flatten`` at the conv → Linear
boundary (input k is channel ``k // P`` at position ``k % P``, with ``P = H·W``).

Unit views. Every weight tensor is handled through one canonical 4-d *unit view*
``[units, gates, inputs, extent]``:

* conv ``[out, in, kh, kw]`` → ``[out, 1, in, kh·kw]`` (extent = kernel positions);
* Linear ``[out, in]`` → ``[out, 1, in, 1]``, or ``[out, 1, C, P]`` after a flatten;
* LSTM ``W_ih [4n, in]`` / ``W_hh [4n, n]`` → ``[n, 4, in, 1]`` / ``[n, 4, n, 1]``
  (gates i, f, g, o);
* biases → ``[units, gates]``.

The views are real torch views (no copy) of contiguous tensors, so writing into them edits the
parameter. Axis 0 of a node's own tensors indexes its units (incoming rows); axis 2 of a
consumer's weight view indexes the producer's units (outgoing columns). The same views apply
to anything shaped like the parameter, e.g. Adam's moment tensors, which is what symmetry
breaking needs to reset exactly the entries it edited.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pufferfiber.policy import Policy

HIDDEN_KINDS = ("conv", "linear", "lstm")
KINDS = ", ".join(HIDDEN_KINDS)
LSTM_GATES = 4


@dataclass(frozen=True)
class LayerNode:
    """One layer of the graph.

    Attributes:
        name: state-dict module path, e.g. ``"policy.policy.network.7"`` or ``"policy.recurrent"``.
        label: short name: ``conv1``.., ``linear1``.., ``lstm``, ``actor``, ``value``.
        kind: ``"conv"``, ``"linear"``, ``"lstm"`` or ``"head"``.
        size: number of units (out channels, neurons, hidden units, outputs).
        activation: ``"relu"`` (positively homogeneous: positive multiples fold exactly),
            ``"lstm"`` (sigmoid/tanh gates) or ``"none"`` (heads).
        producer: name of the node feeding this one, ``None`` for the observation.
        mapping: ``"identity"`` or ``"flatten"`` (how an input index maps to producer units).
        in_units: number of producer units (or observation channels / features).
        extent: entries per (unit, input unit): kernel positions for conv, ``H·W`` after a
            flatten, 1 otherwise.
        gates: rows per unit: 4 for the LSTM, 1 otherwise.
        weight_key: state-dict key of the incoming weight (``W_ih`` for the LSTM).
        bias_keys: state-dict keys of the bias(es) (the LSTM has ``b_ih`` and ``b_hh``).
        recurrent_key: ``W_hh`` for the LSTM, else ``None``.
        kernel: conv kernel ``(kh, kw)``; ``None`` otherwise.
    """

    name: str
    label: str
    kind: str
    size: int
    activation: str
    producer: str | None
    mapping: str
    in_units: int
    extent: int
    gates: int
    weight_key: str
    bias_keys: tuple[str, ...]
    recurrent_key: str | None = None
    kernel: tuple[int, int] | None = None

    @property
    def hidden(self) -> bool:
        """True for collapsible layers (conv, Linear, LSTM), False for heads."""
        return self.kind in HIDDEN_KINDS


@dataclass(frozen=True)
class UnitAxis:
    """A tensor slot whose unit view has one axis indexed by a node's units.

    ``key`` is the state-dict key, ``role`` one of ``"weight"``, ``"bias"``, ``"recurrent"``
    (incoming side, axis 0) or ``"out"`` / ``"recurrent_out"`` (a consumer's columns, axis 2),
    and ``owner`` the node the tensor belongs to.
    """

    key: str
    role: str
    owner: LayerNode

    @property
    def axis(self) -> int:
        return 2 if self.role in ("out", "recurrent_out") else 0


class LayerGraph:
    """Nodes in forward order plus producer/consumer links, derived from a :class:`Policy`."""

    def __init__(self, nodes: list[LayerNode]) -> None:
        self.nodes = nodes
        self._by_name = {n.name: n for n in nodes}
        self._by_label = {n.label: n for n in nodes}

    def __iter__(self) -> Iterator[LayerNode]:
        return iter(self.nodes)

    def __getitem__(self, key: str) -> LayerNode:
        """A node by name (``policy.policy.network.7``) or label (``linear1``)."""
        node = self._by_name.get(key) or self._by_label.get(key)
        if node is None:
            raise KeyError(f"no layer {key!r}; layers: {', '.join(n.label for n in self.nodes)}")
        return node

    @property
    def hidden(self) -> list[LayerNode]:
        """Collapsible nodes (conv, Linear, LSTM) in forward order."""
        return [n for n in self.nodes if n.hidden]

    @property
    def heads(self) -> list[LayerNode]:
        return [n for n in self.nodes if n.kind == "head"]

    def select_hidden(self, layers: Sequence[str] | None) -> list[LayerNode]:
        """Hidden nodes named by ``layers`` (names, labels or the kinds ``conv``, ``linear``,
        ``lstm``), in forward order; ``None`` = all. Unknown names and heads are a ValueError."""
        if layers is None:
            return self.hidden
        chosen: set[str] = set()
        for key in layers:
            by_kind = [n.name for n in self.hidden if n.kind == key]
            node = self._by_name.get(key) or self._by_label.get(key)
            if by_kind:
                chosen.update(by_kind)
            elif node is None:
                valid = ", ".join(n.label for n in self.hidden)
                kinds = ", ".join(k for k in HIDDEN_KINDS if any(n.kind == k for n in self.hidden))
                what = (
                    f"no {key} layer in this policy" if key in HIDDEN_KINDS else f"no layer {key!r}"
                )
                raise ValueError(f"{what}; choose from {valid}, or the kinds {kinds}")
            elif not node.hidden:
                raise ValueError(f"layer {key!r} is a head; only hidden layers can be chosen")
            else:
                chosen.add(node.name)
        return [n for n in self.hidden if n.name in chosen]

    def producer(self, node: LayerNode) -> LayerNode | None:
        return None if node.producer is None else self._by_name[node.producer]

    def consumers(self, node: LayerNode) -> list[LayerNode]:
        """Nodes that read this node's units (the LSTM's own recurrence is not listed)."""
        return [n for n in self.nodes if n.producer == node.name]

    def incoming_axes(self, node: LayerNode) -> list[UnitAxis]:
        """Tensors holding the node's incoming rows: weight, bias(es), LSTM ``W_hh`` rows."""
        axes = [UnitAxis(node.weight_key, "weight", node)]
        axes += [UnitAxis(k, "bias", node) for k in node.bias_keys]
        if node.recurrent_key is not None:
            axes.append(UnitAxis(node.recurrent_key, "recurrent", node))
        return axes

    def outgoing_axes(self, node: LayerNode) -> list[UnitAxis]:
        """Tensors holding the node's outgoing columns: consumers' weights, ``W_hh`` columns."""
        axes = [UnitAxis(c.weight_key, "out", c) for c in self.consumers(node)]
        if node.recurrent_key is not None:
            axes.append(UnitAxis(node.recurrent_key, "recurrent_out", node))
        return axes


# --------------------------------------------------------------------------- building


def _head_node(module: nn.Linear, name: str, label: str, producer: LayerNode) -> LayerNode:
    return LayerNode(
        name=name,
        label=label,
        kind="head",
        size=module.out_features,
        activation="none",
        producer=producer.name,
        mapping="identity",
        in_units=producer.size,
        extent=1,
        gates=1,
        weight_key=f"{name}.weight",
        bias_keys=(f"{name}.bias",),
    )


def build_graph(policy: Policy) -> LayerGraph:
    """Walk ``policy.network``, the LSTM and the heads; no layer position is assumed.

    Raises ``ValueError`` for a network this walk does not understand (a layer type other than
    Conv2d, ReLU, Flatten, Linear), rather than guessing.
    """
    prefix = "policy.policy.network"
    nodes: list[LayerNode] = []
    producer: LayerNode | None = None
    in_units = policy.arch.obs_shape[0] if policy.arch.kind == "cnn" else 0
    flattened_from: LayerNode | None = None
    counts = {"conv": 0, "linear": 0}
    for idx, module in enumerate(policy.network):
        name = f"{prefix}.{idx}"
        if isinstance(module, nn.ReLU):
            if not nodes or nodes[-1].activation != "pending":
                raise ValueError(f"{name}: ReLU without a preceding conv or Linear layer")
            nodes[-1] = _with_activation(nodes[-1], "relu")
            producer = nodes[-1]
        elif isinstance(module, nn.Flatten):
            flattened_from = producer
        elif isinstance(module, nn.Conv2d):
            counts["conv"] += 1
            kh, kw = module.kernel_size
            n_in = producer.size if producer is not None else in_units
            nodes.append(
                LayerNode(
                    name=name,
                    label=f"conv{counts['conv']}",
                    kind="conv",
                    size=module.out_channels,
                    activation="pending",
                    producer=None if producer is None else producer.name,
                    mapping="identity",
                    in_units=n_in,
                    extent=kh * kw,
                    gates=1,
                    weight_key=f"{name}.weight",
                    bias_keys=(f"{name}.bias",),
                    kernel=(kh, kw),
                )
            )
        elif isinstance(module, nn.Linear):
            counts["linear"] += 1
            nodes.append(
                _linear_node(module, name, f"linear{counts['linear']}", producer, flattened_from)
            )
            flattened_from = None
        else:
            raise ValueError(f"{name}: unsupported layer {type(module).__name__} in the encoder")
    if producer is None or any(n.activation == "pending" for n in nodes):
        raise ValueError("encoder must end with a Linear layer followed by ReLU")
    lstm = _lstm_node(policy.lstm, "policy.recurrent", producer)
    heads = [
        _head_node(policy.actor, "policy.policy.actor", "actor", lstm),
        _head_node(policy.value_fn, "policy.policy.value_fn", "value", lstm),
    ]
    return LayerGraph([*nodes, lstm, *heads])


def _with_activation(node: LayerNode, activation: str) -> LayerNode:
    return dataclasses.replace(node, activation=activation)


def _linear_node(
    module: nn.Linear,
    name: str,
    label: str,
    producer: LayerNode | None,
    flattened_from: LayerNode | None,
) -> LayerNode:
    mapping, n_in, extent = "identity", module.in_features, 1
    if producer is not None and flattened_from is producer and producer.kind == "conv":
        # conv → flatten → Linear: input k is (channel k // P, position k % P).
        if module.in_features % producer.size:
            raise ValueError(
                f"{name}: {module.in_features} inputs do not split into {producer.size} channels"
            )
        mapping, n_in, extent = "flatten", producer.size, module.in_features // producer.size
    elif producer is not None:
        n_in = producer.size
    return LayerNode(
        name=name,
        label=label,
        kind="linear",
        size=module.out_features,
        activation="pending",
        producer=None if producer is None else producer.name,
        mapping=mapping,
        in_units=n_in,
        extent=extent,
        gates=1,
        weight_key=f"{name}.weight",
        bias_keys=(f"{name}.bias",),
    )


def _lstm_node(module: nn.LSTM, name: str, producer: LayerNode) -> LayerNode:
    if module.num_layers != 1 or module.bidirectional or module.proj_size:
        raise ValueError(f"{name}: only a one-layer, unidirectional LSTM is supported")
    return LayerNode(
        name=name,
        label="lstm",
        kind="lstm",
        size=module.hidden_size,
        activation="lstm",
        producer=producer.name,
        mapping="identity",
        in_units=producer.size,
        extent=1,
        gates=LSTM_GATES,
        weight_key=f"{name}.weight_ih_l0",
        bias_keys=(f"{name}.bias_ih_l0", f"{name}.bias_hh_l0"),
        recurrent_key=f"{name}.weight_hh_l0",
    )


# --------------------------------------------------------------------------- unit views


def weight_view(node: LayerNode, weight: torch.Tensor) -> torch.Tensor:
    """The node's incoming weight as ``[units, gates, in_units, extent]`` (a view)."""
    n, g = node.size, node.gates
    if g > 1:  # LSTM rows are gate-major: row g·n + u belongs to unit u.
        return weight.view(g, n, node.in_units, node.extent).transpose(0, 1)
    return weight.view(n, 1, node.in_units, node.extent)


def recurrent_view(node: LayerNode, weight_hh: torch.Tensor) -> torch.Tensor:
    """LSTM ``W_hh`` as ``[units, 4, units, 1]`` (a view)."""
    n = node.size
    return weight_hh.view(node.gates, n, n, 1).transpose(0, 1)


def bias_view(node: LayerNode, bias: torch.Tensor) -> torch.Tensor:
    """A bias as ``[units, gates]`` (a view)."""
    return bias.view(node.gates, node.size).transpose(0, 1)


def unit_view(axis: UnitAxis, tensor: torch.Tensor) -> torch.Tensor:
    """The unit view of ``tensor`` (a parameter, or anything shaped like it) for ``axis``."""
    if axis.role == "bias":
        return bias_view(axis.owner, tensor)
    if axis.role in ("recurrent", "recurrent_out"):
        return recurrent_view(axis.owner, tensor)
    return weight_view(axis.owner, tensor)


def take_units(
    axis: UnitAxis, tensor: torch.Tensor, units: torch.Tensor | list[int]
) -> torch.Tensor:
    """Copy of the entries of ``units`` (incoming rows or outgoing columns), unit axis kept."""
    idx = torch.as_tensor(units, dtype=torch.long, device=tensor.device)
    return unit_view(axis, tensor).index_select(axis.axis, idx).clone()


def put_units(
    axis: UnitAxis,
    tensor: torch.Tensor,
    units: torch.Tensor | list[int],
    values: torch.Tensor | float,
) -> None:
    """Write ``values`` (shaped like :func:`take_units`' result, or a scalar) in place."""
    view = unit_view(axis, tensor)
    idx = torch.as_tensor(units, dtype=torch.long, device=tensor.device)
    if not torch.is_tensor(values):
        shape = list(view.shape)
        shape[axis.axis] = len(idx)
        values = torch.full(shape, float(values), dtype=tensor.dtype, device=tensor.device)
    view.index_copy_(axis.axis, idx, values.to(tensor.dtype))


def add_units(
    axis: UnitAxis, tensor: torch.Tensor, units: torch.Tensor | list[int], values: torch.Tensor
) -> None:
    """Add ``values`` onto the entries of ``units`` in place (repeated units accumulate)."""
    idx = torch.as_tensor(units, dtype=torch.long, device=tensor.device)
    unit_view(axis, tensor).index_add_(axis.axis, idx, values.to(tensor.dtype))


def named_tensors(policy: Policy) -> Mapping[str, torch.Tensor]:
    """State-dict key → live parameter tensor (``.data``: edits are not tracked by autograd)."""
    return {k: p.data for k, p in policy.named_parameters()}
